"""The labelling page in a real browser: Debian's chromium driven by Playwright for Python.

For each task family (MuJoCo clips, text, recommendation sessions) the test builds a run folder
whose queries were shown by the family's own presenter (real H.264 clips of recorded HalfCheetah
segments; real text and session segments), serves it with ``prefenv label``, opens an
annotator's link and checks what a person sees: both clips playing, or both texts, or both
tables. It then labels 20 queries with the keyboard, undoes one (and answers it again) and reads
the progress text, which must agree with the store. A screenshot of each family's page goes to
``benchmarks/figures/label_<family>.png`` when ``PREFENV_SCREENSHOTS=1`` (else to a temporary
folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefenv.presenters import INSTRUCTIONS
from prefenv.records import Segment

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

FIGURES = Path(__file__).resolve().parents[2] / "benchmarks" / "figures"
SAVE_SCREENSHOTS = "PREFENV_SCREENSHOTS"
"""Set this environment variable to 1 to refresh the committed screenshots in FIGURES; without
it they go to the test's temporary folder, so a test run leaves the checkout as it was."""
QUERIES = 24
LABELS = 20
KEYS = [("1", "left"), ("ArrowRight", "right"), ("3", "equal"), ("ArrowLeft", "left"),
        ("2", "right"), ("=", "equal"), ("s", "skip"), ("0", "skip")]  # fmt: skip
"""Every shortcut the page offers, cycled through, with the choice each must record."""

VIDEOS = "[...document.querySelectorAll('#pair video')]"
Pairs = list[tuple[Segment, Segment]]


def _clip_queries(clips: Path) -> tuple[Pairs, list[dict[str, Any]]]:
    """Recorded HalfCheetah segment pairs and their MP4 clips (3 rendered, posted in turn)."""
    import prefenv
    from prefenv.app.media import presenter_for
    from prefenv.recording import collect_trajectories
    from prefenv.sampling import sample_segment_pairs

    env = prefenv.make("prefenv/HalfCheetah-v0", max_episode_steps=120)
    trajectories = collect_trajectories(env, 1, seed=0)
    env.close()
    rendered = sample_segment_pairs(trajectories, 3, 30, rng=np.random.default_rng(0))
    presenter = presenter_for("prefenv/HalfCheetah-v0")
    media = [presenter.present(*pair, clips, f"q{i}") for i, pair in enumerate(rendered)]
    presenter.close()
    return [rendered[i % 3] for i in range(QUERIES)], [media[i % 3] for i in range(QUERIES)]


def _text_queries(clips: Path) -> tuple[Pairs, list[dict[str, Any]]]:
    """Text segments (prompt, two completions) shown by the text family's presenter."""
    from prefenv.app.media import presenter_for
    from prefenv.text_records import text_segment

    presenter = presenter_for("prefenv/TextSentiment-v0")
    pairs = [(text_segment(f"Review of film {i}:", f"A warm, funny film ({i}).", 1.0),
              text_segment(f"Review of film {i}:", f"It dragged on and on ({i}).", -1.0))
             for i in range(QUERIES)]  # fmt: skip
    return pairs, [presenter.present(*pair, clips, f"q{i}") for i, pair in enumerate(pairs)]


def _session_queries(clips: Path) -> tuple[Pairs, list[dict[str, Any]]]:
    """Recorded recommendation sessions shown as tables by the family's presenter."""
    import prefenv
    from prefenv.app.media import presenter_for
    from prefenv.recording import collect_trajectories
    from prefenv.sampling import sample_segment_pairs

    env = prefenv.make("prefenv/RecSlate-v0")
    trajectories = collect_trajectories(env, 8, seed=0)
    env.close()
    pairs = sample_segment_pairs(trajectories, QUERIES, 6, rng=np.random.default_rng(0),
                                 cut_at_termination=True)  # fmt: skip
    presenter = presenter_for("prefenv/RecSlate-v0")
    return pairs, [presenter.present(*pair, clips, f"q{i}") for i, pair in enumerate(pairs)]


FAMILIES: dict[str, tuple[str, Callable[[Path], tuple[Pairs, list[dict[str, Any]]]]]] = {
    "clips": ("prefenv/HalfCheetah-v0", _clip_queries),
    "text": ("prefenv/TextSentiment-v0", _text_queries),
    "sessions": ("prefenv/RecSlate-v0", _session_queries),
}
"""Media kind (one per task family) -> (env id, the query builder)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        yield launched
        launched.close()


def _check_clips_play(page: Any, media: dict[str, Any]) -> None:
    """Both videos show the query's clips, have frames (readyState >= 2) and play on."""
    videos = page.locator("#pair video")
    assert videos.count() == 2
    for k, side in enumerate(("left", "right")):
        assert videos.nth(k).get_attribute("src") == f"/clips/{media[side]}"
    page.wait_for_function(
        f"() => {VIDEOS}.every(v => v.readyState >= 2 && !v.paused && v.currentTime > 0.2)",
        timeout=15_000,
    )
    before = page.evaluate(f"{VIDEOS}.map(v => v.currentTime)")
    page.wait_for_timeout(300)
    after = page.evaluate(f"{VIDEOS}.map(v => [v.currentTime, v.readyState, v.videoWidth])")
    for (now, ready, width), then in zip(after, before, strict=True):
        assert now != then and ready >= 2 and width == 320, (before, after)


def _check_shown(page: Any, kind: str, media: dict[str, Any]) -> None:
    """The first pair is on screen as its family shows it."""
    page.locator("#pair").wait_for(state="visible")
    if kind == "clips":
        _check_clips_play(page, media)
    elif kind == "text":
        assert page.locator("#prompt").inner_text().endswith(media["prompt"])
        for side in ("left", "right"):
            assert page.locator(f"#{side} .text").inner_text() == media[side]
    else:
        for side in ("left", "right"):
            rows = page.locator(f"#{side} table tbody tr")
            assert rows.count() == len(media[side]["rows"])
            assert page.locator(f"#{side} table thead th").all_inner_texts() == media["columns"]
    for button in ("#choose-left", "#choose-right", "#choose-equal", "#choose-skip", "#undo"):
        assert page.locator(button).is_visible(), f"{button} is not on the page"
    assert page.locator("#instructions").inner_text() == INSTRUCTIONS[kind]


def _look(page: Any, kind: str) -> None:
    """Look at the pair before answering: wait until the page has it on screen (clips loaded,
    text laid out), where it starts timing the label (``#pair[data-shown]``)."""
    if kind == "clips":
        page.wait_for_function(f"() => {VIDEOS}.every(v => v.readyState >= 2)")
    page.wait_for_function("() => document.querySelector('#pair').dataset.shown !== undefined")


def _console_error(message: Any, errors: list[str]) -> None:
    """Keep the page's console errors, but the browser's own favicon request (the app has none)."""
    if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
        errors.append(f"{message.text} ({message.location['url']})")


def _press(page: Any, key: str, labelled: int) -> None:
    """Press ``key`` and wait until the page has taken it: the progress says ``labelled`` and
    a fresh pair is drawn (the page ignores keys while a request is in flight)."""
    page.evaluate("document.querySelector('#left').firstElementChild.dataset.stale = '1'")
    page.keyboard.press(key)
    page.wait_for_function(
        """n => {
            const shown = document.querySelector('#left').firstElementChild;
            const redrawn = shown !== null && shown.dataset.stale === undefined;
            const done = !document.querySelector('#waiting').hidden;
            return document.querySelector('#progress').textContent.startsWith(n + ' labelled')
                && (redrawn || done);
        }""",
        arg=labelled,
        timeout=10_000,
    )


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_label_page_in_a_real_browser(
    kind, browser, make_label_run, label_server, tmp_path
) -> None:
    env_id, build = FAMILIES[kind]
    run = make_label_run(kind, env=env_id, annotators=["alice"])
    pairs, media = build(run.clips)
    run.post(media, pairs=pairs)
    server = label_server(run.path)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: _console_error(msg, errors))

    page.goto(server.link(run.tokens["alice"]))
    assert page.url == f"{server.url}/label"
    _check_shown(page, kind, media[0])
    page.wait_for_timeout(300)  # let the clips move on from their first frame
    FIGURES.mkdir(parents=True, exist_ok=True)
    folder = FIGURES if os.environ.get(SAVE_SCREENSHOTS) == "1" else tmp_path
    shot = folder / f"label_{kind}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty image

    expected = []
    for i in range(LABELS):
        key, choice = KEYS[i % len(KEYS)]
        _look(page, kind)
        _press(page, key, i + 1)
        expected.append(choice)
    page.keyboard.press("u")
    page.wait_for_function(
        "n => document.querySelector('#progress').textContent.startsWith(n + ' labelled')",
        arg=LABELS - 1,
    )
    assert "taken back" in page.locator("#status").inner_text()
    _look(page, kind)
    _press(page, "ArrowRight", LABELS)
    expected[-1] = "right"

    progress = page.locator("#progress").inner_text()
    from_server = page.request.get(f"{server.url}/api/progress").json()
    assert progress == f"{from_server['labelled']} labelled · {from_server['waiting']} waiting"
    assert from_server["labelled"] == LABELS
    assert from_server["waiting"] == QUERIES - LABELS
    rows = run.label_rows()
    assert [row["choice"] for row in rows] == expected
    assert {row["annotator"] for row in rows} == {"alice"}
    seconds = [row["response_seconds"] for row in rows]
    assert all(s is not None and s >= 0 for s in seconds), f"response times {seconds}"
    assert not errors, f"the page logged errors: {errors}"
    page.close()
