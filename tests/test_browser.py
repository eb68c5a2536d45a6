"""The UI in a real browser: `tomes ui` serves the app, Debian's Chromium (headless,
through its chromedriver) uses it as a person would. It uploads a real book, summarizes it
with many model calls on the scripted backend, asks a one-call question on the embedded
model, sees both answers, opens the run's call tree and a provenance entry in the reader,
and saves a screenshot of every page to docs/ (shown in the README).

Chromium and chromedriver come from apt (`bash scripts/browser-deps.sh`); nothing is
downloaded at run time (Selenium Manager is kept offline and never asked for a driver).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BOOKS = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data")) / "books"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1440, 1500


def browser_missing(chromium: Path = CHROMIUM, driver: Path = CHROMEDRIVER) -> str | None:
    """Why the browser test cannot run here, or None."""
    missing = [str(p) for p in (chromium, driver) if not os.access(p, os.X_OK)]
    if missing:
        return (f"{' and '.join(missing)} not found: the browser test drives Debian's Chromium "
                "through its chromedriver. Install both with `bash scripts/browser-deps.sh`")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def test_a_missing_browser_fails_naming_the_install_script(tmp_path):
    why = browser_missing(tmp_path / "chromium", tmp_path / "chromedriver")
    assert why and "scripts/browser-deps.sh" in why and str(tmp_path / "chromium") in why


# --- the server and the browser --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tomes_home: Path) -> Iterator[str]:
    """`tomes ui` on a free port, with this test's TOMES_HOME, scripted backend and hash
    embedder (from the environment conftest sets)."""
    import urllib.request

    port = _free_port()
    tomes = Path(sys.executable).with_name("tomes")
    log = (tomes_home.parent / "ui.log").open("w")
    proc = subprocess.Popen([str(tomes), "ui", "--host", "127.0.0.1", "--port", str(port), "--headless"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`tomes ui` did not come up: {(tomes_home.parent / 'ui.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser():
    why = browser_missing()
    if why:
        pytest.fail(why)  # not a skip: CI installs them; a missing browser is a broken setup
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


# --- driving Streamlit -----------------------------------------------------------------


class App:
    """What a person does in the app, in Selenium terms."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.d, self.url, self.By = driver, url, By

    def open(self, path: str = "", **query: str) -> None:
        from urllib.parse import urlencode

        self.d.get(f"{self.url}/{path}" + (f"?{urlencode(query)}" if query else ""))
        self.until(lambda: self.d.find_elements(self.By.CSS_SELECTOR, "[data-testid='stHeading']"),
                   f"the page {path or 'library'} to load")
        self.settle()

    def until(self, check: Callable[[], object], what: str, timeout: float = 60.0) -> object:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
                if value:
                    return value
            except (StaleElementReferenceException, WebDriverException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the page shows:\n{self.text()[:3000]}")
            time.sleep(0.3)

    def settle(self, quiet: float = 1.0) -> None:
        """Until Streamlit has stopped rerunning the script (its status widget gone)."""
        calm_since = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = self.d.find_elements(self.By.CSS_SELECTOR, "[data-testid='stStatusWidget']")
            if busy:
                calm_since = None
            elif calm_since is None:
                calm_since = time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return
            time.sleep(0.2)

    def text(self) -> str:
        try:
            return self.d.find_element(self.By.CSS_SELECTOR, "[data-testid='stMain']").text
        except Exception:  # noqa: BLE001 - only for a failure message
            return self.d.page_source[:3000]

    def shows(self, text: str, timeout: float = 60.0) -> None:
        self.until(lambda: text in self.text(), repr(text), timeout)

    def widget(self, testid: str, label: str):
        xpath = (f"//*[@data-testid='{testid}'][.//*[@data-testid='stWidgetLabel']"
                 f"[normalize-space()='{label}']]")
        return self.until(lambda: self.d.find_element(self.By.XPATH, xpath), f"the {label!r} widget")

    def choose(self, label: str, option: str) -> None:
        """Pick an option of a selectbox by typing part of it, as a person would."""
        from selenium.webdriver.common.keys import Keys

        box = self.widget("stSelectbox", label)
        field = box.find_element(self.By.TAG_NAME, "input")
        field.click()
        field.send_keys(option)
        self.until(lambda: self.d.find_elements(self.By.CSS_SELECTOR, "[role='option']"),
                   f"options of {label!r} matching {option!r}")
        field.send_keys(Keys.ENTER)
        self.settle()

    def button(self, label: str):
        xpath = f"//button[normalize-space()='{label}']"
        return self.until(lambda: next((b for b in self.d.find_elements(self.By.XPATH, xpath)
                                        if b.is_displayed() and b.is_enabled()), None),
                          f"the button {label!r}")

    def click(self, label: str) -> None:
        self.button(label).click()
        time.sleep(0.5)
        self.settle()

    def type(self, testid: str, label: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.widget(testid, label)
        field = box.find_element(self.By.CSS_SELECTOR, "textarea, input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text)
        # A text area applies on Ctrl+Enter, a text input on Enter.
        field.send_keys(Keys.CONTROL, Keys.ENTER) if field.tag_name == "textarea" else field.send_keys(Keys.ENTER)
        time.sleep(0.5)
        self.settle()

    def radio(self, option: str) -> None:
        xpath = f"//*[@data-testid='stRadio']//label[normalize-space()='{option}']"
        self.until(lambda: self.d.find_element(self.By.XPATH, xpath), f"the radio {option!r}").click()
        self.settle()

    def expand(self, summary: str) -> None:
        xpath = f"//*[@data-testid='stExpander']//summary[contains(normalize-space(), '{summary}')]"
        self.until(lambda: self.d.find_element(self.By.XPATH, xpath), f"the expander {summary!r}").click()
        self.settle()

    def shot(self, name: str) -> Path:
        self.settle(quiet=2.0)  # a page caught mid-rerun shows greyed, half-drawn elements
        DOCS.mkdir(exist_ok=True)
        path = DOCS / f"ui-{name}.png"
        self.d.execute_script("window.scrollTo(0, 0);")
        self.d.save_screenshot(str(path))
        return path


# --- the journey -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_person_uses_the_app_in_chromium(server, browser, tmp_path):
    from app.api import Tomes

    ui = App(browser, server)
    book = tmp_path / "frankenstein.txt"
    shutil.copy(BOOKS / "frankenstein.txt", book)
    # A page of another real book for the embedded model: one call reads it whole.
    proposal = (BOOKS / "a_modest_proposal.txt").read_text(encoding="utf-8")
    start = proposal.index("It is a melancholy object")
    passage = tmp_path / "a_modest_proposal_opening.txt"
    passage.write_text(proposal[start:start + 1400].rsplit(".", 1)[0] + ".\n", encoding="utf-8")

    # 1. Library: upload both through the file picker, see them stored and indexed.
    ui.open()
    picker = ui.d.find_element(ui.By.CSS_SELECTOR, "[data-testid='stFileUploaderDropzoneInput']")
    picker.send_keys(f"{book}\n{passage}")
    ui.until(lambda: "frankenstein.txt" in ui.text() and "a_modes" in ui.text(), "both files to be picked")
    ui.click("Ingest")
    ui.shows("Added:", timeout=180)
    ui.shows("ready ·", timeout=180)
    docs = {d["title"]: d for d in Tomes().documents()}
    frankenstein = next(d for title, d in docs.items() if "Frankenstein" in title)
    assert frankenstein["chunks"] > 100 and any("modest" in t.lower() for t in docs)
    ui.shot("library")

    # 2. Ask & summarize: a summary of the whole book, many map calls on the scripted model.
    ui.open("ask")
    ui.choose("Over", frankenstein["title"])
    ui.click("Run")
    ui.shows("Done · summarize", timeout=300)
    ui.shows("What it rests on")
    ui.shows("Download JSON")
    summary = Tomes().run_list()[0]
    assert summary["status"] == "done" and summary["calls"] > 5, summary
    ui.shot("ask-summary")

    # 3. A question on the embedded model, over the page that fits one call.
    opening = next(d for d in Tomes().documents() if "opening" in d["title"].lower())
    ui.choose("Over", opening["title"])
    ui.radio("Ask")
    ui.type("stTextArea", "Question", "What melancholy sight does the author describe?")
    ui.expand("Options")
    ui.choose("Strategy", "direct")  # the whole page in one call
    ui.choose("Backend", "embedded")
    ui.click("Run")
    ui.shows("Done · ask", timeout=600)
    asked = Tomes().run_list()[0]
    assert asked["status"] == "done" and asked["question"].startswith("What melancholy")
    calls = [c for c in Tomes().calls(asked["id"])]
    assert {c["backend"] for c in calls} == {"embedded"}
    first_calls = [c for c in calls if c["parent_id"] not in {x["id"] for x in calls}]
    assert len(first_calls) == 1, [c["node"] for c in calls]  # one call read the page whole
    answer = Tomes().run(asked["id"])["result"]["answer"]
    assert answer.strip()
    ui.shows(answer.strip().splitlines()[0][:60])
    ui.shot("ask-embedded")

    # 4. Runs & calls: the summary's call tree, drawn.
    ui.open("runs", run=summary["id"])
    ui.shows("Model calls")
    svg_text = ui.until(lambda: " ".join(
        t.text for t in ui.d.find_elements(ui.By.CSS_SELECTOR, "[data-testid='stGraphVizChart'] svg text")),
        "the call tree's drawing")
    assert "map ×" in svg_text and "reduce" in svg_text, svg_text[:500]
    ui.until(lambda: len(ui.d.find_elements(ui.By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']")) >= 2,
             "the charts of tokens and latency")
    heading = ui.d.find_element(ui.By.XPATH, "//*[@data-testid='stHeading'][normalize-space()='Model calls']")
    ui.d.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)
    ui.settle(quiet=2.0)
    ui.d.save_screenshot(str(DOCS / "ui-runs.png"))

    # 5. A provenance entry of the summary opens the reader with its quote highlighted.
    # (the Runs page shows a finished run's answer and provenance unfolded)
    links = ui.until(lambda: [a for a in ui.d.find_elements(ui.By.CSS_SELECTOR, "a[href*='reader?doc=']")
                              if a.is_displayed()], "a provenance link")
    href = links[0].get_attribute("href")
    assert f"run={summary['id']}" in href
    links[0].click()
    ui.until(lambda: "/reader" in ui.d.current_url, "the reader to open")
    ui.settle()
    marks = ui.until(lambda: ui.d.find_elements(ui.By.CSS_SELECTOR, "mark.tomes-quote"),
                     "the highlighted quote")
    assert marks[0].text.strip()
    ui.shows("Highlighting what summary rests on")
    ui.shot("reader")

    # 6. The other pages, for the README.
    ui.open("search")
    ui.type("stTextInput", "Query", "the creature on the ice")
    ui.until(lambda: ui.d.find_elements(ui.By.CSS_SELECTOR, "[data-testid='stDataFrame']"), "search hits")
    ui.shot("search")
    ui.open("settings")
    ui.shows("Presets")
    ui.shot("settings")
    ui.open("memory")
    ui.shows("Memory")
    ui.shot("memory")
    for name in ("library", "ask-summary", "ask-embedded", "runs", "reader", "search", "settings", "memory"):
        assert (DOCS / f"ui-{name}.png").stat().st_size > 10_000
