"""Short-lived child processes (espeak-ng) owned by one speech component."""

from __future__ import annotations

import asyncio


class ChildProcesses:
    """Runs programs to completion; each is killed and reaped if its caller is cancelled, and
    ``kill_all`` stops those still running (their callers see a non-zero exit status)."""

    def __init__(self) -> None:
        self._running: set[asyncio.subprocess.Process] = set()

    async def run(self, argv: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
        """``(exit status, stdout, stderr)``; ``OSError`` when the program cannot start."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._running.add(proc)
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            # The child is reaped even if we are cancelled again while waiting for it.
            await asyncio.shield(proc.wait())
            raise
        finally:
            self._running.discard(proc)
        assert proc.returncode is not None
        return proc.returncode, out, err

    def kill_all(self) -> None:
        for proc in list(self._running):
            if proc.returncode is None:
                proc.kill()
