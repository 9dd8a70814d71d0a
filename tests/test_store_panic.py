"""A write of LMDB's meta page that fails puts its environment in a fatal state (MDB_PANIC): every
later transaction is refused until the environment is opened again. The engine refused every
submit (and every read) until a restart; the store now opens it again and goes on."""

from __future__ import annotations

import pytest

from osreapi.errors import DiskFull
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_mend16 import failing_sync  # noqa: F401 - a fixture


@pytest.mark.timeout(90)
def test_the_store_goes_on_after_a_failed_write_of_a_meta_page(failing_sync, make_executor, tmp_path):
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(call_timeout=20)
    before = ex.submit([sh("echo before")])
    assert ex.wait(before, 30).steps[0].output == "before\n"
    switch.fail_meta()
    with pytest.raises(DiskFull):  # its commit's meta page is refused: LMDB's fatal state from now on
        ex.submit([sh("true")])
    switch.heal()

    def submitted() -> str | None:
        try:
            return ex.submit([sh("echo after")])
        except DiskFull:
            return None

    after: list[str | None] = []
    assert wait_until(lambda: after.append(submitted()) or after[-1] is not None, timeout=30, interval=0.2)
    assert ex.wait(after[-1], 30).steps[0].output == "after\n"
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    assert ex.get(before).task.state is State.STOPPED  # what was committed before is all there
