"""Debian's U-Boot for QEMU's virt machine (u-boot-qemu), interactively, on vgic and QEMU.

``vgic run --bios u-boot.bin`` must reach the ``=> `` prompt, answer ``version`` with a
U-Boot version line and power off (PSCI SYSTEM_OFF, exit status 0) on ``poweroff``; the
same session under QEMU must print the same version line. The console is driven through
pipes by an expect-style reader with timeouts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU = shutil.which("qemu-system-aarch64")

pytestmark = pytest.mark.skipif(not UBOOT.exists(), reason=f"{UBOOT} not installed (Debian package u-boot-qemu)")


class Console:
    """A child process's serial console: send text, wait for a pattern (with a deadline)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.pos = 0
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            with self.cond:
                self.buf += chunk
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def expect(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        """Wait for ``pattern`` in the output after the last match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = self.buf[-2000:].decode(errors="replace")
                    raise AssertionError(f"no {pattern!r} within {timeout} s; console ends with:\n{tail}")
                self.cond.wait(left)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _session(cmd: list[str], boot_timeout: float) -> tuple[str, int, str]:
    """Boot to the prompt, ``version``, ``poweroff``: (version line, exit status, stderr)."""
    con = Console(cmd)
    try:
        con.expect(rb"Hit any key to stop autoboot", boot_timeout)
        con.send(" ")  # stop autoboot: straight to the prompt
        con.expect(rb"=> ", 30)
        con.send("version\r")
        line = con.expect(rb"\n(U-Boot [^\r\n]+)\r?\n", 30).group(1).decode()
        con.expect(rb"=> ", 30)
        con.send("poweroff\r")
        status = con.wait(30)
        assert con.proc.stderr is not None
        return line, status, con.proc.stderr.read().decode(errors="replace")
    finally:
        con.close()


@pytest.fixture(scope="module")
def qemu_version_line() -> str | None:
    if QEMU is None:
        return None
    line, status, err = _session(
        [QEMU, "-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-m", "512M", "-nographic", "-net", "none",
         "-bios", str(UBOOT)],
        boot_timeout=30,
    )  # fmt: skip
    assert status == 0, err
    return line


@pytest.mark.parametrize("mode", [[], ["--deterministic"]], ids=["timed", "counted"])
def test_uboot_prompt_version_poweroff(mode: list[str], qemu_version_line: str | None) -> None:
    line, status, err = _session(
        [sys.executable, "-m", "vgic.cli", "run", "--bios", str(UBOOT), "--timeout", "120", *mode], boot_timeout=60
    )
    assert status == 0, f"vgic run exited {status}:\n{err}"
    assert re.match(r"U-Boot \d{4}\.\d{2}", line), line
    if qemu_version_line is not None:
        assert line == qemu_version_line
