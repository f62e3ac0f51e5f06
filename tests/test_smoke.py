"""End-to-end smoke test: the demo's flow delivers what it should."""

from vgic import demo


def test_demo_delivers_and_reports() -> None:
    lines = demo.run([])
    text = "\n".join(lines)
    assert "CPU0: [8192, 8196], CPU1: [8193, 8197], CPU2: [8194, 8198], CPU3: [8195, 8199]" in text
    assert "MOVI to collection 2 -> CPU2: [8193]" in text
    assert "MOVALL 3->0 -> CPU0: [8195, 8199]" in text
    assert "error 0x010a04" in text
