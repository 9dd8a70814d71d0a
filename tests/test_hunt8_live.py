"""Faults found by the hunt of the event feed, the live output and the dashboard's routes: each test
reproduces one against a real cheroot server and fails without its fix."""

from __future__ import annotations

import pytest

from .conftest import Client


@pytest.mark.parametrize("asset", ["/ui/", "/ui/app.js", "/ui/tasks/some-task"])
@pytest.mark.parametrize("ranges", ["bytes=999999-", "garbage", "bytes=5-1"])
def test_a_range_on_a_dashboard_file_is_ignored_not_answered_with_an_html_page(client: Client, asset: str, ranges: str) -> None:
    """Bottle answered a Range it could not serve (past the end, or not a range at all) with its
    HTML 416 page, in English whatever the request's language: the files are now always whole."""
    whole = client.get(asset)
    assert whole.status == 200 and whole.header("Accept-Ranges") is None
    answer = client.get(asset + "?lang=zh", headers={"Range": ranges})
    assert (answer.status, answer.body) == (200, whole.body)
    assert client.get(asset, headers={"Range": "bytes=0-4"}).body == whole.body  # never a part


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/tasks/a/b", "/ui/%2e%2e%2fsetup.py", "/ui/x.js"])
def test_an_unknown_dashboard_path_is_no_such_route_not_an_unknown_task(client: Client, path: str) -> None:
    """`/ui/index.html` reached GET /<id>/<step> and answered that task 'ui' does not exist."""
    answer = client.get(path + "?lang=en")
    assert answer.status == 404 and answer.json["message"] == "no such route", answer.body
