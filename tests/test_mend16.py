"""mend16: the store's failure windows hunt14 left open: a flush that fails after a create that
replaced an expired task, or after a deletion; an identical re-post racing a DELETE; the claim of
a case-folding name given back; a tree of many files that cannot be removed."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from osreapi.vocabulary import State

from .conftest import sh


# -- 5. a tree of many files that cannot be removed ---------------------------------------------------


def test_a_tree_of_many_unremovable_files_is_one_warning(make_executor, caplog):
    """A read-only bind mount in a workspace (a step run as root can make one): each of its files
    refused its unlink (EROFS), and the store logged one warning per file. One warning per removal
    now, with the count and the first path."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount takes root")
    ex = make_executor()
    task_id = ex.submit([sh("mkdir kept && cd kept && touch $(seq 200)")])
    assert ex.wait(task_id, 30).task.state == State.STOPPED
    kept = ex.config.workspace(task_id) / "kept"
    subprocess.run(["mount", "--bind", str(kept), str(kept)], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(kept)], check=True, capture_output=True, timeout=30)
        with caplog.at_level(logging.WARNING, logger="osreapi.actors.store"):
            ex.delete(task_id)
    finally:
        subprocess.run(["umount", "--lazy", str(kept)], check=False, capture_output=True, timeout=30)
    warnings = [record.getMessage() for record in caplog.records if record.name == "osreapi.actors.store"]
    assert len(warnings) == 1, warnings[:3]
    assert "201 entries" in warnings[0] and f"{kept}/" in warnings[0], warnings[0]
    assert ex.get(task_id) is None
