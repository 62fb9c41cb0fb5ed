"""The web UI in a real browser: Debian's headless Chromium, driven by selenium, on the Nano.

One Gradio server and one browser serve the whole module (browser start-up is the slow part),
and the tests run in order as one person's visit: ask where the blue square is on an uploaded
scene, watch a drawing being denoised, make a slide and download the deck, resume the first
session, fork it. The server is ``seedx ui`` itself, run in a thread. Every request the page makes is read from Chrome's performance log; the last test
fails if any went beyond 127.0.0.1. Screenshots of each step are kept (see `ARTIFACTS`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "examples" / "nano" / "scene.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_FIX = ("the web UI test needs Debian's chromium and chromium-driver: run "
               "`bash scripts/browser.sh` (as root on Debian or Ubuntu), and `pip install -e "
               "'.[ui,dev]'` for gradio and selenium")
ARTIFACTS = Path(os.environ.get("SEEDX_TEST_ARTIFACTS") or ROOT / "out" / "test-artifacts") / "web_ui"
WAIT = 40  # seconds for one step of the page, on a shared CPU
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: {BROWSER_FIX}")
    pytest.skip(f"{what}: {BROWSER_FIX}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """The one Chromium of the module, and every request its pages have made."""

    def __init__(self, driver, url: str, store, page):
        self.driver = driver
        self.page = page
        self.url = url
        self.store = store
        self.requests: list[str] = []
        self.screenshots: list[str] = []

    def collect_requests(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            elif message["method"] == "Network.webSocketCreated":
                self.requests.append(message["params"]["url"])
        return self.requests

    def find(self, css: str, *, timeout: float = WAIT):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def until(self, condition, *, timeout: float = WAIT, what: str = ""):
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
                lambda d: condition())
        except Exception:
            self.screenshot(f"failed-{what or 'wait'}")
            raise

    def chat_text(self) -> str:
        return self.driver.find_element("css selector", "#seedx-chat").text

    def chat_images(self) -> list[str]:
        return [img.get_attribute("src") or "" for img in
                self.driver.find_elements("css selector", "#seedx-chat img")]

    def click(self, css: str) -> None:
        element = self.find(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def pick(self, radio: str, label_contains: str) -> None:
        """Click the choice of the radio group ``radio`` whose label holds ``label_contains``."""
        def choice():
            for label in self.driver.find_elements("css selector", f"{radio} label"):
                if label_contains in label.text:
                    return label
            return None

        label = self.until(choice, what=f"choice-{label_contains}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", label)
        label.click()

    def ask(self, text: str, *pictures: Path) -> None:
        if pictures:
            upload = self.find("#seedx-input input[type=file]")
            upload.send_keys("\n".join(str(p) for p in pictures))
            self.until(lambda: self.driver.find_elements(
                "css selector", "#seedx-input img, #seedx-input .thumbnail-item"),
                what="upload")
        box = self.find("#seedx-input textarea")
        box.send_keys(text)
        from selenium.webdriver.common.keys import Keys

        box.send_keys(Keys.ENTER)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.screenshots.append(path.name)
        return path


def _start_chromium(webdriver):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's; never Selenium Manager's download
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                            options=options)


def _serve(store_dir: Path, port: int):
    """``seedx ui`` itself, on the Nano, in a thread; returns the page once it answers."""
    import threading

    import httpx
    from gradio import Blocks

    from seedx_agent import cli

    failed: list[BaseException] = []

    def run():
        try:
            cli.main(["ui", "--model", "nano", "--store", str(store_dir), "--port", str(port),
                      "--num-inference-steps", "2", "--max-new-tokens", "96"])
        except BaseException as exc:  # reported below, in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="seedx-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise AssertionError(f"seedx ui ended before serving: {failed}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("seedx ui did not answer within 90 s")
    return next(b for b in Blocks.get_instances() if b.is_running and b.server_port == port)


@pytest.fixture(scope="module")
def browser(one_thread, tmp_path_factory, request):
    try:
        from selenium import webdriver
    except ImportError:
        _missing("selenium is not installed")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _missing(f"no {CHROMIUM} or {CHROMEDRIVER}")
    from concurrent.futures import ThreadPoolExecutor

    import seedx_agent

    store_dir = tmp_path_factory.mktemp("ui-store")
    port = _free_port()
    with ThreadPoolExecutor(1) as pool:  # the browser starts while the Nano loads
        starting = pool.submit(_start_chromium, webdriver)
        page = _serve(store_dir, port)
        driver = starting.result()
    store = seedx_agent.SessionStore(store_dir)  # a second connection, as another process would
    here = Browser(driver, f"http://127.0.0.1:{port}/", store, page)
    try:
        driver.get(here.url)
        here.find("#seedx-input textarea", timeout=60)
        yield here
    finally:
        here.collect_requests()
        driver.quit()
        page.close()
        store.close()
        _say(request, f"web UI screenshots in {ARTIFACTS}: {', '.join(here.screenshots)}")


def _say(request, line: str) -> None:
    """A line in the test output, past pytest's capture (the screenshots are worth finding)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def stored_turn(browser):
    """The newest session's last turn, once the page's turn has been stored."""
    def newest():
        sessions = browser.store.list_sessions()
        turns = browser.store.turns(sessions[-1].id) if sessions else []
        return turns[-1] if turns else None

    return browser.until(newest, what="stored-turn")


def test_a_box_is_named_in_the_words_and_drawn_on_its_picture(tmp_path):
    """The rendering alone, without a browser: the words name the box with its pixels, the
    picture it is on comes back with its outline drawn where the box is."""
    from PIL import Image

    from seedx_agent import BoxPart, TextPart
    from seedx_agent.integrations.gradio_ui.render import PictureFiles, answer_messages

    white = Image.new("RGB", (100, 80), "white")
    box = BoxPart(bins=(112, 112, 112, 112), phrase="the square").on(100, 80, target_image="a" * 64,
                                                                  target_kind="input")
    pictures = PictureFiles(tmp_path, lambda image_id: white)
    messages = answer_messages([TextPart(text="It is at"), box, TextPart(text=".")], pictures)
    assert messages[0]["content"] == "It is at [the square: 25, 20, 75, 60]."
    drawn = Image.open(messages[1]["content"]["path"]).convert("RGB")
    assert drawn.getpixel((25, 40)) != (255, 255, 255)  # on the outline
    assert drawn.getpixel((50, 40)) == (255, 255, 255)  # inside it, the picture as it was


def test_an_uploaded_scene_gets_its_box_drawn_on_the_picture(browser):
    browser.ask("Where is the blue square?", SCENE)
    browser.until(lambda: any("boxes-" in src for src in browser.chat_images()),
                  what="annotated-picture")
    browser.screenshot("1-grounding")
    # no button a person could press to post the chat or a picture to Hugging Face
    assert not browser.driver.execute_script(
        "return [...document.querySelectorAll('button')].filter(b => /share/i.test("
        "(b.getAttribute('aria-label') || '') + (b.getAttribute('title') || ''))"
        " && b.getClientRects().length > 0).map(b => b.outerHTML)")
    turn = stored_turn(browser)
    boxes = [p for p in turn.parts if p.type == "box"]
    assert boxes and boxes[0].pixel_xyxy is not None, turn.parts
    x0, y0, x1, y1 = (round(v) for v in boxes[0].pixel_xyxy)
    assert f"{x0}, {y0}, {x1}, {y1}]" in browser.chat_text()  # the box, named in the answer
    assert "Where is the blue square?" in browser.chat_text()


def test_a_drawing_shows_its_denoising_steps(browser):
    browser.click("#seedx-new")
    browser.until(lambda: "blue square" not in browser.chat_text(), what="new-session")
    # every progress text the chat shows, as it shows it: the steps come and go quickly
    browser.driver.execute_script("""
        window.seedxSeen = [];
        new MutationObserver(() => {
          const found = document.querySelector('#seedx-chat').innerText.match(/step \\d+\\/\\d+/g);
          if (found) window.seedxSeen.push(...found);
        }).observe(document.querySelector('#seedx-chat'),
                   {subtree: true, childList: true, characterData: true});""")
    browser.click("#seedx-force input[type=checkbox]")
    browser.ask("Draw a red circle.")
    browser.until(lambda: "step 2/2" in browser.chat_text(), what="denoising")
    turn = stored_turn(browser)
    made = [p.image_id for p in turn.parts if p.type == "image" and p.role == "generated"]
    assert made, turn.parts
    browser.until(lambda: any(made[0] in src for src in browser.chat_images()), what="drawing")
    browser.screenshot("2-drawing")
    seen = browser.driver.execute_script("return window.seedxSeen")
    assert {"step 1/2", "step 2/2"} <= set(seen), seen
    browser.click("#seedx-force input[type=checkbox]")  # back off for the next test


def test_the_slides_skill_gives_a_deck_to_download(browser):
    import httpx
    from pptx import Presentation

    browser.click("#seedx-new")
    browser.pick("#seedx-skill", "slides")
    browser.until(lambda: browser.driver.execute_script(
        "return document.querySelector('#seedx-skill input:checked')?.value") == "slides",
        what="skill-picked")
    browser.ask("Make a slide about blue squares.")

    def deck_link():
        for link in browser.driver.find_elements("css selector", "#seedx-downloads a"):
            if (link.get_attribute("href") or "").endswith("deck.pptx"):
                return link.get_attribute("href")
        return None

    href = browser.until(deck_link, what="deck-link")
    browser.screenshot("3-slides")
    assert urlsplit(href).hostname == "127.0.0.1"
    reply = httpx.get(href, timeout=10)
    assert reply.status_code == 200
    assert zipfile.is_zipfile(io.BytesIO(reply.content))
    deck = Presentation(io.BytesIO(reply.content))
    assert len(deck.slides) == 1
    browser.pick("#seedx-skill", "none")


def test_a_listed_session_resumes_with_its_annotated_answer(browser):
    first = browser.store.list_sessions()[0]
    browser.click("#seedx-new")
    browser.until(lambda: "Where is the blue square?" not in browser.chat_text(), what="new")
    browser.pick("#seedx-sessions", first.id[:8])
    browser.click("#seedx-resume")
    browser.until(lambda: "Where is the blue square?" in browser.chat_text(), what="resume")
    browser.until(lambda: any("boxes-" in src for src in browser.chat_images()), what="boxes")
    browser.screenshot("4-resumed")
    # the resumed session goes on from its stored turns
    browser.ask("Where is the red circle?")
    browser.until(lambda: len(browser.store.turns(first.id)) == 2, what="continued")


def test_a_forked_session_copies_the_turns_and_leaves_the_original(browser):
    first = browser.store.list_sessions()[0]
    browser.click("#seedx-fork")
    fork = browser.until(lambda: next((s for s in browser.store.list_sessions()
                                       if s.parent is not None), None), what="fork")
    assert fork.parent.session_id == first.id
    assert [t.request.text for t in browser.store.turns(fork.id)] == \
        [t.request.text for t in browser.store.turns(first.id)]
    browser.until(lambda: "(fork)" in browser.find("#seedx-sessions").text, what="fork-listed")
    # the page now shows the fork, selected: the next turn goes to it, not to the original
    assert "Where is the blue square?" in browser.chat_text()
    browser.until(lambda: browser.driver.execute_script(
        "return document.querySelector('#seedx-sessions input:checked')?.value") == fork.id,
        what="fork-selected")
    browser.screenshot("5-forked")


def remote(urls: list[str]) -> list[str]:
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob")
            and urlsplit(u).hostname not in LOCAL_HOSTS]


def test_the_page_requested_nothing_beyond_127_0_0_1(browser):
    time.sleep(0.5)  # the last responses' sub-resources
    urls = list(browser.collect_requests())
    assert len(urls) > 10, urls  # the log was read: the page, its scripts, its API calls
    assert not remote(urls)
    assert browser.page.analytics_enabled is False and browser.page.share_url is None
    # the log would have shown a remote request: one to TEST-NET-1 (RFC 5737), which no host
    # answers, is seen
    browser.driver.execute_script("fetch('http://192.0.2.1/probe').catch(() => {})")
    browser.until(lambda: remote(browser.collect_requests()), what="remote-probe")
    assert remote(browser.requests) == ["http://192.0.2.1/probe"]
