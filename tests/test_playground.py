"""The playground page in a real browser: headless Debian Chromium, driven by Selenium through the packaged
chromedriver, against a real `aim-icl serve` (the embedded world model) on a loopback port.

Needs `chromium` and `chromium-driver` (`scripts/browser.sh`); without them these tests skip (fail under CI=1).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from conftest import serving
from PIL import Image

pytestmark = pytest.mark.browser

KEY = "playground-key"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# where the test leaves its screenshot for a person to look at; AIM_ICL_SCREENSHOT=docs/playground.png refreshes the
# README's (not by default: every run's latencies differ, and a test run should not change tracked files)
SCREENSHOT = Path(
    os.environ.get("AIM_ICL_SCREENSHOT") or Path(tempfile.gettempdir()) / "aim-icl-playground.png"
)
MODES = ("zero", "text", "icl", "aim")
SEED, SHOTS = 0, 4  # seed 0: the episode a fresh page draws first
WAIT_S = 90


@pytest.fixture(scope="module")
def server():
    with serving("--api-key", KEY) as url:
        yield url


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"{missing[0]} not found: run scripts/browser.sh (Debian chromium + chromium-driver)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver  # in the test extra: a missing one is an install error, not a skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # the packaged driver, named explicitly: Selenium Manager would try to download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser, server):
    """The page, loaded once with no key; the first test gives it the key."""
    browser.get("about:blank")
    # drop what the browser's own start-up page (chrome://new-tab-page and its parts) asked for
    browser.get_log("performance")
    browser.get(server + "/")
    return browser


def wait(driver, condition, seconds: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def by_css(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def text_of(driver, css: str) -> str:
    return by_css(driver, css).get_attribute("textContent")


def draw(driver, task: str, seed: int, shots: int) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_css(driver, "#world-task")).select_by_value(task)
    for field, value in (("#seed", seed), ("#shots", shots)):
        by_css(driver, field).clear()
        by_css(driver, field).send_keys(str(value))
    by_css(driver, "#draw").click()
    wait(driver, lambda d: by_css(d, "#seed").get_attribute("value") == str(seed + 1))


def run_and_wait(driver, keyboard: bool = False) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.body.dataset.run = 'asked'")  # a previous run's "done" is not this one's
    if keyboard:  # Ctrl+Enter from the prompt field
        by_css(driver, "#query-text").send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        by_css(driver, "#run").click()
    wait(driver, lambda d: d.execute_script("return document.body.dataset.run") == "done")


def messages_of(episode: dict) -> list[dict]:
    """The chat the page sends for a drawn episode: each demo a user turn (image + text) and the answer."""

    def user(turn: dict) -> dict:
        image = {"type": "image_url", "image_url": {"url": turn["image"]}}
        return {"role": "user", "content": [image, {"type": "text", "text": turn["text"]}]}

    messages = []
    for demo in episode["demos"]:
        messages += [user(demo), {"role": "assistant", "content": demo["answer"]}]
    return [*messages, user(episode["query"])]


def verdict(answer: str, expected: str) -> str:
    """What the page must show for an answer: right when the answer, or its first sentence (up to " ."), is the
    expected one."""
    answer = answer.strip()
    first = answer[: answer.index(" .") + 2] if " ." in answer else answer
    return "✓ right" if expected.strip() in (answer, first) else "✗ wrong"


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_without_a_key_the_page_shows_the_401_message_then_takes_the_key(page):
    wait(page, lambda d: by_css(d, "#auth").is_displayed())
    assert text_of(page, "#auth-message") == "missing API key: send 'Authorization: Bearer <key>'"
    by_css(page, "#api-key").send_keys(KEY)
    by_css(page, "#auth-form button").click()
    wait(page, lambda d: text_of(d, "#model") == "Model: aim.")
    assert not by_css(page, "#auth").is_displayed()
    assert page.execute_script("return sessionStorage.getItem('aim-icl-api-key')") == KEY


def test_a_world_episode_in_four_modes_answers_as_the_api_does(page, api):
    draw(page, "fast_binding", SEED, SHOTS)
    assert len(page.find_elements("css selector", "#demos .demo")) == SHOTS
    run_and_wait(page, keyboard=True)
    episode = api.post(
        "/v1/world/episode", json={"task": "fast_binding", "seed": SEED, "shots": SHOTS}
    ).json()
    assert text_of(page, "#expected-text") == episode["answer"]
    for mode in MODES:
        card = f"[data-mode={mode}]"
        assert text_of(page, f"{card} .error") == ""
        body = {"messages": messages_of(episode), "aim_mode": mode, "max_tokens": episode["max_tokens"]}
        reply = api.post("/v1/chat/completions", json=body).json()
        answer = reply["choices"][0]["message"]["content"]
        assert text_of(page, f"{card} .answer") == (answer or "(empty)"), mode
        assert text_of(page, f"{card} .tokens") == str(reply["usage"]["prompt_tokens"]), mode
        assert text_of(page, f"{card} .latency").endswith(" ms")
        assert text_of(page, f"{card} .verdict") == verdict(answer, episode["answer"]), mode
    assert text_of(page, "[data-mode=aim] .latency").startswith("first token")  # it streamed
    save_screenshot(page, "#answers")


def test_the_verdict_follows_the_right_answer_field(page):
    """Whatever the model answers: named the right answer, it is judged right; another answer, wrong."""
    answer = text_of(page, "[data-mode=aim] .answer")  # the previous test's run
    assert answer not in ("", "(empty)", "—")
    for expected, shown in ((answer, "✓ right"), (answer + " not", "✗ wrong")):
        by_css(page, "#expected").clear()
        by_css(page, "#expected").send_keys(expected)
        run_and_wait(page)
        assert text_of(page, "[data-mode=aim] .answer") == answer  # greedy: the same answer again
        assert text_of(page, "[data-mode=aim] .verdict") == shown
        for mode in MODES:
            card = f"[data-mode={mode}]"
            assert text_of(page, f"{card} .error") == "", mode
            assert text_of(page, f"{card} .verdict") == verdict(text_of(page, f"{card} .answer"), expected)


def save_screenshot(driver, last: str) -> None:
    """The page from the top to just below `last`, at the window's width (`SCREENSHOT`)."""
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    bottom = driver.execute_script(f"return document.querySelector('{last}').getBoundingClientRect().bottom")
    width = driver.execute_script("return document.documentElement.clientWidth")
    clip = {"x": 0, "y": 0, "width": width, "height": int(bottom) + 24, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))


def test_inspect_shows_each_fused_token_next_to_its_own_token(page, api):
    by_css(page, "#demos .demo .inspect").click()
    wait(page, lambda d: d.find_elements("css selector", "#inspect tbody tr"))
    first = page.execute_script(
        "const d = document.querySelector('#demos .demo');"
        "return [d.querySelector('img').src, d.querySelector('.demo-text').value, d.querySelector('.demo-answer').value]"
    )
    readout = api.post(
        "/v1/inspect", json={"image": first[0], "user": first[1], "assistant": first[2]}
    ).json()
    rows = page.find_elements("css selector", "#inspect tbody tr")
    assert len(rows) == len(readout["slots"]) > 0
    for row, slot in zip(rows, readout["slots"]):
        cells = [c.get_attribute("textContent") for c in row.find_elements("css selector", "td")]
        assert cells[1:] == [slot["token"], " / ".join(slot["nearest"])]


def test_icl_past_the_context_says_it_does_not_fit(page):
    draw(
        page, "fast_binding", SEED, 32
    )  # 32 images are past the world model's 512 tokens; fused demos are not
    run_and_wait(page)
    assert text_of(page, "[data-mode=icl] .fit") == "does not fit"
    assert "but the model's context is 512" in text_of(page, "[data-mode=icl] .error")
    assert text_of(page, "[data-mode=aim] .error") == ""
    assert text_of(page, "[data-mode=aim] .answer") not in ("", "—")


def test_an_uploaded_query_image_is_what_the_server_gets(page, tmp_path):
    draw(page, "fast_binding", SEED, SHOTS)
    path = tmp_path / "query.png"
    path.write_bytes(png_bytes((200, 40, 40)))
    by_css(page, "#query-file").send_keys(str(path))
    expected = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    wait(page, lambda d: by_css(d, "#query-drop img").get_attribute("src") == expected)
    run_and_wait(page)
    for mode in MODES:
        assert text_of(page, f"[data-mode={mode}] .error") == ""
        assert text_of(page, f"[data-mode={mode}] .answer") not in ("", "—", "…")


def test_a_bad_image_shows_the_servers_message(page, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all")
    by_css(page, "#demos .demo .demo-file").send_keys(str(path))
    wait(
        page, lambda d: d.execute_script("return document.querySelector('#demos .demo img').src.length < 100")
    )
    run_and_wait(page)
    message = "image bytes are not a readable image; send PNG, JPEG or WebP"
    for mode in MODES:
        assert text_of(page, f"[data-mode={mode}] .error") == message


def test_demos_are_added_reordered_removed_and_saved_as_a_task(page, api):
    draw(page, "fast_binding", SEED, SHOTS)
    answers = "return [...document.querySelectorAll('#demos .demo-answer')].map(e => e.value)"
    before = page.execute_script(answers)
    by_css(page, "#add-demo").click()
    focused = page.switch_to.active_element.get_attribute("aria-label")
    assert focused == f"demo {len(before) + 1} image"  # focus moves to the new demo's image chooser
    by_css(page, "#demos .demo:last-child .demo-answer").send_keys("added .")
    assert page.execute_script(answers) == [*before, "added ."]
    by_css(page, "#demos .demo:nth-child(2) [aria-label='move demo 2 left']").click()
    assert page.execute_script(answers) == [before[1], before[0], *before[2:], "added ."]
    assert page.switch_to.active_element.get_attribute("aria-label") == "move demo 1 right"
    by_css(page, "#demos .demo:last-child [aria-label^='remove demo']").click()
    assert page.execute_script(answers) == [before[1], before[0], *before[2:]]
    by_css(page, "#task-name").send_keys("from-the-page")
    by_css(page, "#task-form button").click()
    wait(page, lambda d: "from-the-page" in text_of(d, "#tasks") or text_of(d, "#task-error"))
    assert text_of(page, "#task-error") == ""
    task = next(t for t in api.get("/v1/tasks").json()["data"] if t["name"] == "from-the-page")
    assert (task["mode"], task["k"]) == ("aim", len(before))


def test_readable_at_a_phones_width(page):
    # headless windows are at least 500 px wide: emulate a phone's 390 px viewport instead
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    try:
        sizes = page.execute_script(
            "const e = document.documentElement; return [window.innerWidth, e.clientWidth, e.scrollWidth]"
        )
        assert sizes[0] == 390 and sizes[2] <= sizes[1]  # nothing wider than the screen
        widths = page.execute_script(
            "return [...document.querySelectorAll('.mode')].map(e => e.getBoundingClientRect().width)"
        )
        assert min(widths) > 300  # one mode per line, not four squeezed columns
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_browser_asked_nothing_of_anyone_but_the_server(page, server):
    urls = []
    for entry in page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert any(u.startswith(f"{server}/v1/chat/completions") for u in urls)
    outside = [u for u in urls if not u.startswith((f"{server}/", "data:", "blob:"))]
    assert outside == []
