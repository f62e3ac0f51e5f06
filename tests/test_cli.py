"""The ``vgic`` command line: one-line errors with documented exit statuses, QEMU's
spellings, ``--dumpdtb``, Ctrl-C, and trace/report across ``--migrate-on``.

Every case runs ``python -m vgic.cli`` in a subprocess and checks the exit status, that
stderr is one line (or says exactly what it should) and that no traceback escaped.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vgic import __version__, cli, snapshot
from vgic.gic import Gic, GicConfig
from vgic.machine.virt import MachineConfig, VirtMachine
from vgic.memory import GuestMemory

OUT = Path(__file__).resolve().parent.parent / "guests" / "out"
LOOP = (0x14000000).to_bytes(4, "little")  # b . : a guest that spins without touching a device
OFF = bytes.fromhex("000180d2") + (0xF2B08000).to_bytes(4, "little") + (0xD4000002).to_bytes(4, "little")


def vgic(*args: str | bytes | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "vgic.cli", *args], capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)  # fmt: skip
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                       p.stderr.decode(errors="replace"))  # fmt: skip


def one_line(p: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """The run exited with ``status`` and said why in one line of stderr, no traceback."""
    err = p.stderr.strip()
    assert p.returncode == status, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    assert err.count("\n") == 0 and err, p.stderr
    for needle in needles:
        assert needle in err, err
    return err


def guest(name: str) -> Path:
    path = OUT / f"{name}.elf"
    if not path.exists():
        pytest.skip(f"{path} not built (make -C guests)")
    return path


@pytest.fixture
def off(tmp_path: Path) -> Path:
    """A flat image that powers off at once (PSCI SYSTEM_OFF)."""
    path = tmp_path / "off.bin"
    path.write_bytes(OFF)
    return path


# -- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512 << 20), ("512M", 512 << 20), ("1G", 1 << 30), ("1g", 1 << 30), ("1.5G", 3 << 29),
     ("size=2G", 2 << 30), ("1048576B", 1 << 20), ("100K", 128 << 10), ("1GB", 1 << 30), ("1GiB", 1 << 30),
     ("255G", 255 << 30), ("0.125T", 128 << 30)],
)  # fmt: skip
def test_memory_sizes_in_qemus_spellings(text: str, size: int) -> None:
    assert cli.memory_size(text) == size


@pytest.mark.parametrize(
    ("size", "message"),
    [("1024G", "at most 255G"), ("1T", "at most 255G"), ("256G", "at most 255G"), ("infG", "not a size"),
     ("nanG", "not a size"), ("-1G", "not a size"), ("1X", "not a size"), ("", "not a size"),
     ("0", "larger than 0"), ("0.0001K", None), ("1G,maxmem=2G", "no memory hotplug")],
)  # fmt: skip
def test_bad_memory_sizes_are_status_2(off: Path, size: str, message: str | None) -> None:
    p = vgic("run", f"--memory={size}", off)
    if message is None:  # a sliver of a KiB rounds up to 64 KiB: too small for the image, status 1
        one_line(p, 1, "vgic: ")
    else:
        one_line(p, 2, "vgic run: error: argument -m/--memory: ", message)


def test_memory_the_host_cannot_give_is_status_1(off: Path) -> None:
    """RAM is an anonymous mapping: a size the address map holds but the host refuses is
    one line with status 1 (a host that overcommits runs the guest)."""
    p = vgic("run", "-m", "250G", off)
    if p.returncode == 0:
        pytest.skip("this host maps 250 GiB of anonymous memory")
    one_line(p, 1, "cannot allocate 256000 MiB of guest RAM on this host")


# -- output paths, checked before the guest runs ---------------------------------------------


@pytest.mark.parametrize("option", ["--trace", "--report-to", "--snapshot-on", "--dumpdtb"])
@pytest.mark.parametrize("where", ["missing directory", "directory"])
def test_output_paths_are_checked_up_front(tmp_path: Path, option: str, where: str) -> None:
    image = guest("its_demo")
    path = tmp_path / "no" / "such" / "out.json" if where == "missing directory" else tmp_path
    args = ["input", str(path)] if option == "--snapshot-on" else [str(path)]
    p = vgic("run", "--smp", "4", option, *args, image)
    one_line(
        p, 2, f"vgic run: error: {option} {path}: ", "no such directory" if where != "directory" else "is a directory"
    )
    assert p.stdout == ""  # the guest never ran
    assert not (tmp_path / "no").exists()


def test_asm_output_path_is_checked_before_reading(tmp_path: Path) -> None:
    src = tmp_path / "q.txt"
    src.write_text("SYNC RDbase=0\n")
    one_line(vgic("asm", src, "-o", tmp_path / "nope" / "q.bin"), 2, "vgic asm: error: -o ", "no such directory")
    one_line(vgic("asm", src, "-o", tmp_path), 2, "is a directory")


def test_a_trace_on_a_full_disk_is_one_line_and_status_1() -> None:
    image = guest("its_demo")
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    p = vgic("run", "--smp", "4", "--trace", "/dev/full", image)
    one_line(p, 1, "vgic: --trace /dev/full: No space left on device; tracing stopped")
    assert p.stdout.rstrip().endswith("PASS")  # the guest ran to the end, undisturbed


# -- text that reaches the guest -------------------------------------------------------------


@pytest.mark.parametrize("option", [("--append",), ("-append",), ("--migrate-on",), ("--snapshot-on",)])
def test_non_utf8_text_is_status_2(tmp_path: Path, off: Path, option: tuple[str]) -> None:
    args: list[str | bytes] = [option[0], b"console=\xff\xfe"]
    if option[0] == "--snapshot-on":
        args.append(str(tmp_path / "s.vgic"))
    one_line(vgic("run", *args, off), 2, "is not UTF-8 text (byte 0xff)")


def test_a_non_utf8_snapshot_file_name_is_fine(tmp_path: Path, off: Path) -> None:
    name = os.fsdecode(bytes(tmp_path) + b"/snap-\xff.vgic")
    p = vgic("run", "--snapshot-on", "never printed", name, off)
    assert p.returncode == 0 and p.stderr == "", p.stderr  # SYSTEM_OFF before the pause


# -- decode, asm, inspect ------------------------------------------------------------------------


@pytest.fixture
def machine_snap(tmp_path: Path) -> Path:
    path = tmp_path / "m.vgic"
    snapshot.save_machine(VirtMachine(MachineConfig(memory=16 << 20)), path)
    return path


@pytest.fixture(params=["machine", "gic"])
def snap(tmp_path: Path, machine_snap: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "s.vgic"
    if request.param == "machine":
        return machine_snap
    else:
        mem = GuestMemory()
        mem.add_ram(0x4000_0000, 1 << 20)
        snapshot.save_gic(Gic(mem, GicConfig(num_cpus=2)), path)
    return path


def test_decode_snapshot_its_out_of_range_is_status_2(snap: Path) -> None:
    one_line(vgic("decode", "--snapshot", snap, "--its", "5"), 2,
             "vgic decode: error: --its 5: the snapshot has 1 ITS (--its 0)")  # fmt: skip
    one_line(vgic("decode", "--snapshot", snap, "--its", "-1"), 2, "argument --its: '-1' is negative")
    p = vgic("decode", "--snapshot", snap)
    assert p.returncode == 0 and "no command queue" in p.stdout, p.stderr
    p = vgic("inspect", snap)
    assert p.returncode == 0 and "ITS 0" in p.stdout, p.stderr


def test_decode_and_inspect_refuse_what_is_not_a_snapshot(tmp_path: Path) -> None:
    one_line(vgic("decode", "--snapshot", tmp_path / "missing.vgic"), 1, "vgic: cannot read snapshot")
    one_line(vgic("inspect", tmp_path), 1, "vgic: cannot read snapshot")
    one_line(vgic("decode", tmp_path), 1, "vgic: cannot read", "Is a directory")
    one_line(vgic("decode", "--offset", "x", tmp_path), 2, "argument --offset: 'x' is not an integer")
    one_line(vgic("decode"), 2, "vgic decode: error: give FILE or --snapshot")


@pytest.mark.parametrize("args", [
    ["decode", "/dev/zero"], ["asm", "/dev/zero"], ["run", "-initrd", "/dev/zero", "IMAGE"],
    ["run", "-dtb", "/dev/zero", "IMAGE"], ["run", "-bios", "/dev/zero"], ["run", "/dev/zero"],
    ["decode", "--snapshot", "/dev/zero"], ["inspect", "/dev/full"], ["run", "--restore", "/dev/zero"],
])  # fmt: skip
def test_endless_inputs_are_refused_not_read(off: Path, args: list[str]) -> None:
    """A device that never ends is read up to the option's bound (the guest RAM for an image,
    2 MiB for a device tree, 64 MiB for the flash) or, for a snapshot, not at all."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    argv = [str(off) if a == "IMAGE" else a for a in args]
    if argv[0] == "run":
        argv += ["--timeout", "5"]
    p = vgic(*argv, timeout=60)
    err = one_line(p, 1)
    assert "larger than the" in err or "not a regular file" in err, err


def test_paths_that_are_not_utf8_are_printed_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file name that is not UTF-8 reaches Python with surrogates; streams as strict as a
    UTF-8 terminal's stdout get it backslash-escaped, not a UnicodeEncodeError."""
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", strict)
    monkeypatch.setattr(sys, "stderr", strict)
    for argv in (["decode", f"{tmp_path}/\udcff.txt"], ["asm", f"{tmp_path}/\udcff.txt"],
                 ["inspect", f"{tmp_path}/\udcff.vgic"]):  # fmt: skip
        assert cli.main(argv) == 1
    out = raw.getvalue().decode()
    assert out.count("\\udcff") == 3 and "No such file or directory" in out, out


@pytest.mark.parametrize("what", ["missing", "directory", "not UTF-8"])
def test_asm_input_problems_are_status_1(tmp_path: Path, what: str) -> None:
    path = {"missing": tmp_path / "missing.txt", "directory": tmp_path, "not UTF-8": tmp_path / "bin.txt"}[what]
    (tmp_path / "bin.txt").write_bytes(b"SYNC RDbase=0\n\xff\xfe\n")
    needle = {"missing": "No such file or directory", "directory": "Is a directory",
              "not UTF-8": "is not UTF-8 text (byte 0xff at offset 14)"}[what]  # fmt: skip
    one_line(vgic("asm", path), 1, needle)


def test_asm_reads_utf8_from_stdin() -> None:
    p = subprocess.run([sys.executable, "-m", "vgic.cli", "asm", "-"], input=b"SYNC RDbase=0\n", capture_output=True)
    assert p.returncode == 0 and len(p.stdout) == 32 and p.stdout[0] == 0x05, p.stderr


def test_asm_refuses_endless_stdin() -> None:
    """Standard input is read up to the same bound as an input file (64 MiB), then refused."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with open("/dev/zero", "rb") as zero:
        p = subprocess.run([sys.executable, "-m", "vgic.cli", "asm", "-"], stdin=zero, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert p.returncode == 1 and "vgic: cannot read stdin: larger than the 67,108,864 bytes" in p.stderr, p.stderr


# -- options that do not fit together ----------------------------------------------------------


@pytest.mark.parametrize("extra", [["--smp", "2"], ["-smp", "4"], ["-m", "1G"], ["--profile", "kvm"],
                                   ["--append", "x"], ["--its-errors", "stall"]])  # fmt: skip
def test_restore_refuses_options_it_would_ignore(machine_snap: Path, extra: list[str]) -> None:
    one_line(vgic("run", "--restore", machine_snap, *extra), 2, "--restore continues the snapshot's machine as it was",
             f"{extra[0] if extra[0] != '-smp' else '--smp'} cannot change it")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "give an IMAGE to run"),
     (["--smp", "65"], "the virt machine has 1 to 64 CPUs"),
     (["--smp", "0"], "every count must be at least 1"),
     (["-smp", "2,maxcpus=4"], "no CPU hotplug"),
     (["-smp", "4,sockets=1,cores=2"], "sockets (1) * dies (1) * clusters (1) * cores (2) * threads (1) != 4 CPUs"),
     (["-smp", "4,books=2"], "unsupported option books"),
     (["--timeout", "nan"], "positive number of seconds"),
     (["--snapshot-on", "input", "s.vgic", "--migrate-on", "input"], "give one"),
     (["-M", "virt,gic-version=2"], "vgic models a GICv3 only"),
     (["-machine", "virt,its=off"], "always has an ITS"),
     (["-M", "sbsa-ref"], "vgic is QEMU's virt machine, not sbsa-ref"),
     (["-M", "virt,secure=on"], "EL1 and EL0 only"),
     (["-M", "virt,accel=kvm"], "Unicorn"),
     (["-M", "virt,iommu=smmuv3"], "unsupported property iommu"),
     (["-cpu", "max"], "vgic's CPUs are Cortex-A57s (-cpu cortex-a57)"),
     (["-net", "user"], "-net user: vgic has no network devices"),
     (["--dumpdtb", "a.dtb", "-M", "virt,dumpdtb=b.dtb"], "give one")],
)  # fmt: skip
def test_bad_options_are_one_line_status_2(off: Path, args: list[str], message: str) -> None:
    image = [] if not args else [off]
    p = vgic("run", *args, *image)  # (no file named here is written: the options are refused first)
    one_line(p, 2, "vgic run: error: ", message)


def test_kernel_and_image_together_is_status_2(off: Path) -> None:
    one_line(vgic("run", "-kernel", off, off), 2, "give the image once")


def test_argparse_errors_are_one_line_too(off: Path) -> None:
    one_line(vgic("run", "--no-such-option", off), 2, "vgic: error: unrecognized arguments: --no-such-option")
    one_line(vgic("frobnicate"), 2, "vgic: error: argument command: invalid choice")
    one_line(vgic("run", "--profile", "nope", off), 2, "argument --profile: invalid choice: 'nope'")


def test_missing_machine_extra_names_it(off: Path) -> None:
    """Without pylibfdt (or Unicorn), ``vgic run`` says which extra to install."""
    for module in ("libfdt", "unicorn"):
        code = (f"import sys; sys.modules[{module!r}] = None; from vgic.cli import main; "
                f"sys.exit(main(['run', {str(off)!r}]))")  # fmt: skip
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        err = one_line(p, 1, "the 'machine' extra", "pip install 'vgic[machine]'")
        assert "No module named" not in err


# -- QEMU's spellings --------------------------------------------------------------------------


def test_a_qemu_command_line_runs() -> None:
    image = guest("its_demo")
    p = vgic("run", "-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-nographic", "-net", "none",
             "-no-reboot", "-smp", "4,sockets=1,cores=4", "-m", "1G", "-append", "console=ttyAMA0", "-kernel", image)  # fmt: skip
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.rstrip().endswith("PASS")


@pytest.mark.parametrize(("spec", "cpus"), [("4", 4), ("cpus=2", 2), ("sockets=2,cores=2", 4), ("4,sockets=2", 4),
                                            ("8,sockets=2,cores=2,threads=2", 8), ("2,maxcpus=2", 2)])  # fmt: skip
def test_smp_topologies(spec: str, cpus: int) -> None:
    assert cli.smp_count(spec) == cpus


def test_dumpdtb_as_qemu_spells_it(tmp_path: Path) -> None:
    """QEMU's own command line from test_machine's comparison: the tree vgic would give."""
    dtb = tmp_path / "virt.dtb"
    p = vgic("run", "-M", f"virt,gic-version=3,its=on,dumpdtb={dtb}", "-cpu", "cortex-a57", "-m", "512M",
             "-smp", "2", "-nographic", "-net", "none")  # fmt: skip
    one_line(p, 0, f"vgic: device tree written to {dtb}")
    assert dtb.read_bytes() == VirtMachine(MachineConfig(smp=2)).device_tree()


def test_dumpdtb_is_what_the_guest_gets(tmp_path: Path, off: Path) -> None:
    dtb, initrd = tmp_path / "g.dtb", tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * 1000)
    p = vgic("run", "--dumpdtb", dtb, "--smp", "3", "--append", "console=ttyAMA0 quiet", "--initrd", initrd, off)
    one_line(p, 0, "device tree written to")
    m = VirtMachine(MachineConfig(smp=3, bootargs="console=ttyAMA0 quiet"))
    m.load(OFF, initrd=initrd.read_bytes())
    blob = dtb.read_bytes()
    assert blob == m.memory.read_bytes(m.dtb_address, len(blob))
    assert b"console=ttyAMA0 quiet\0" in blob and b"linux,initrd-start" in blob
    one_line(vgic("run", "--dumpdtb", dtb, "--restore", dtb), 2, "--dumpdtb cannot change it")


def test_version_and_python_m_vgic() -> None:
    p = subprocess.run([sys.executable, "-m", "vgic", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"vgic {__version__}"
    p = subprocess.run([sys.executable, "-m", "vgic", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "2 bad options" in p.stdout and "130 interrupted" in p.stdout


# -- Ctrl-C ------------------------------------------------------------------------------------


def _interrupt(args: list[str | Path], ready: bytes | None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "vgic.cli", "run", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    if ready is None:
        time.sleep(3)  # the guest spins silently
    else:
        seen = b""
        while ready not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "the guest ended before it was ready"
            seen += chunk
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"), err.decode())


def test_ctrl_c_in_a_spinning_guest_is_status_130(tmp_path: Path) -> None:
    image = tmp_path / "loop.bin"
    image.write_bytes(LOOP)
    p = _interrupt(["--smp", "4", str(image)], None)
    one_line(p, 130, "vgic: interrupted (Ctrl-C)")


def test_ctrl_c_while_a_guest_polls_the_uart_is_status_130() -> None:
    p = _interrupt(["--smp", "2", str(guest("its_migrate"))], b"waiting for input")
    one_line(p, 130, "vgic: interrupted (Ctrl-C)")


# -- trace and report across --migrate-on ---------------------------------------------------------


def _migrate(*extra: str | Path) -> subprocess.CompletedProcess[str]:
    """its_migrate with --migrate-on input: the key is typed once the migration is done."""
    proc = subprocess.Popen([sys.executable, "-m", "vgic.cli", "run", "--smp", "2", "--timeout", "60",
                             "--migrate-on", "input", *extra, guest("its_migrate")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    err = b""
    while b"vgic: migrated" not in err:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, err
        err += chunk
    proc.stdin.write(b"x")
    proc.stdin.flush()
    out, rest = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), (err + rest).decode())


def test_json_trace_across_a_migration_is_one_valid_file(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    p = _migrate("--trace", trace)
    assert p.returncode == 0 and p.stdout.rstrip().endswith("PASS"), p.stderr
    records = json.loads(trace.read_text())  # one JSON array, not two
    assert isinstance(records, list)
    moved = [i for i, r in enumerate(records) if r.get("cat") == "state" and "migrated" in r["args"]["message"]]
    assert len(moved) == 1
    before, after = records[: moved[0]], records[moved[0] + 1 :]
    assert any(r.get("name") == "MAPTI" for r in before)  # the guest's set-up, before the move
    assert any(r.get("ph") == "B" for r in after)  # interrupts taken after it
    stamps = [r["ts"] for r in records if "ts" in r]
    assert stamps == sorted(stamps)  # one clock for the whole run
    assert sum(r.get("name") == "process_name" for r in records) == 1


def test_text_trace_and_report_cover_the_whole_run(tmp_path: Path) -> None:
    trace, rep, plain = tmp_path / "t.txt", tmp_path / "r.txt", tmp_path / "plain.txt"
    p = _migrate("--trace", trace, "--report-to", rep)
    assert p.returncode == 0, p.stderr
    lines = trace.read_text().splitlines()
    moved = [i for i, line in enumerate(lines) if "migrated" in line]
    assert len(moved) == 1 and 0 < moved[0] < len(lines) - 1
    seqs = [int(line.split()[2].lstrip("#")) for line in lines]
    assert seqs == list(range(len(lines)))  # one numbering: the log went on across the move
    # the report: the bad MAPTI came before the migration, and is there
    text = rep.read_text()
    assert "error 0x010a04" in text and "MAPTI DeviceID=0x63" in text
    # ... and it counts what a run without migration counts
    q = subprocess.run([sys.executable, "-m", "vgic.cli", "run", "--smp", "2", "--timeout", "60", "--report-to", plain,
                        guest("its_migrate")], input=b"x", capture_output=True, timeout=120)  # fmt: skip
    assert q.returncode == 0, q.stderr
    assert text == plain.read_text()


def test_a_snapshot_on_a_full_disk_is_one_line_and_status_1() -> None:
    image = guest("its_migrate")
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    p = vgic("run", "--smp", "2", "--timeout", "60", "--snapshot-on", "input", "/dev/full", image)
    one_line(p, 1, "vgic: cannot write the snapshot /dev/full: No space left on device")
