"""The search page in a real browser (Playwright driving Chromium, headless) against a live server:
typing and Enter show the Searcher's ranking, the URL keeps the query and re-runs it on reload,
a thumbnail enlarges with a click or from the keyboard, other indexes and image queries work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from slq.data.images import load_image

QUERY = "a red circle and a blue square"


def launch(playwright):
    """Chromium from the system (no browser download here); a skip, with the reason, only when it cannot start."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    args = ["--disable-dev-shm-usage", "--disable-gpu"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    try:
        return playwright.chromium.launch(executable_path=executable, headless=True, args=args)
    except Exception as e:  # noqa: BLE001  (whatever stops the browser from starting)
        pytest.skip(f"Chromium cannot start ({executable}): {str(e).splitlines()[0]}")


def result_ids(page) -> list[int]:
    return page.locator("#results li.result").evaluate_all("items => items.map(item => Number(item.dataset.id))")


def wait_for_results(page, index: str) -> None:
    page.wait_for_function("name => document.getElementById('results').dataset.index === name && "
                           "document.querySelectorAll('#results li.result').length > 0 && "
                           "!document.body.classList.contains('busy')", arg=index, timeout=30_000)


def wait_for_image(page, selector: str) -> None:
    page.wait_for_function("s => { const img = document.querySelector(s); return img && img.complete && "
                           "img.naturalWidth > 0; }", arg=selector, timeout=30_000)


def save_screenshot(page, tmp_path: Path) -> Path:
    shot = tmp_path / "slq-serve.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SLQ_SCREENSHOT"):
        target = Path(os.environ["SLQ_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


@pytest.fixture
def page():
    """A page in headless Chromium, closed after the test."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 860})
        finally:
            browser.close()


def test_search_page(page, server, reference, collection, tmp_path):
    expected = [hit.id for hit in reference.search(QUERY, k=10, index="shapes")]
    problems: list[str] = []  # script errors, and CSP violations (Chromium reports them as console errors)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("response", lambda response: response.status >= 400 and problems.append(
        f"{response.status} {response.url}"))
    page.goto(f"{server.url}/")
    page.wait_for_function("() => document.querySelectorAll('#index option').length === 3")

    # Type, press Enter: the grid shows the Searcher's ranking, and the URL holds the query.
    box = page.get_by_label("Search text")
    box.fill(QUERY)
    box.press("Enter")
    wait_for_results(page, "shapes")
    assert result_ids(page) == expected
    assert parse_qs(urlparse(page.url).query) == {"q": [QUERY], "index": ["shapes"], "k": ["10"]}
    wait_for_image(page, "#results li.result img")
    first = page.locator("#results li.result img").first
    assert first.get_attribute("alt")  # a caption as alt text
    assert "results from shapes" in page.locator("#status").inner_text()
    shot = save_screenshot(page, tmp_path)
    print(f"\nscreenshot: {shot}")

    # A click enlarges the thumbnail in a modal dialog; Escape closes it and focus returns.
    thumb = first.bounding_box()
    first.click()
    page.wait_for_function("() => document.getElementById('lightbox').open")
    wait_for_image(page, "#lightbox-image")
    assert page.locator("#lightbox-image").get_attribute("src") == f"/items/shapes/{expected[0]}/image"
    large = page.locator("#lightbox-image").bounding_box()
    assert large["width"] > 2 * thumb["width"], (large, thumb)
    page.screenshot(path=str(tmp_path / "slq-serve-lightbox.png"))
    page.keyboard.press("ArrowRight")  # the next result, from the keyboard
    assert page.locator("#lightbox-image").get_attribute("src") == f"/items/shapes/{expected[1]}/image"
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.getElementById('lightbox').open")
    focus_on = "() => document.activeElement.closest('li.result')?.dataset.id"
    try:  # focus settles on the result last shown (a wrong one stays wrong: the assert says which)
        page.wait_for_function("id => document.activeElement.closest('li.result')?.dataset.id === id",
                               arg=str(expected[1]), timeout=5000)
    except Exception:  # noqa: BLE001  (Playwright's timeout; the assert below reports what is focused)
        pass
    assert page.evaluate(focus_on) == str(expected[1])

    # Without a mouse: focus a card and press Enter.
    page.locator("#results li.result button").nth(2).focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('lightbox').open")
    assert page.locator("#lightbox-image").get_attribute("src") == f"/items/shapes/{expected[2]}/image"
    page.keyboard.press("Escape")

    # Reloading the URL re-runs the query.
    url = page.url
    page.reload()
    wait_for_results(page, "shapes")
    assert page.url == url and box.input_value() == QUERY and result_ids(page) == expected

    # Another index, chosen in the selector: a text index shows texts, no thumbnails.
    page.get_by_label("Index", exact=True).select_option("notes")
    wait_for_results(page, "notes")
    notes = reference.search(QUERY, k=10, index="notes")
    assert page.locator("#results li.result .text").all_inner_texts() == [hit.text for hit in notes]
    assert page.locator("#results li.result img").count() == 0
    assert parse_qs(urlparse(page.url).query)["index"] == ["notes"]

    # An image with the text: uploaded through the file input, read together.
    page.get_by_label("Index", exact=True).select_option("shapes-alt")
    wait_for_results(page, "shapes-alt")
    query_image = collection.test_images[0]
    page.set_input_files("#image", str(query_image))
    both = [hit.id for hit in reference.search(QUERY, load_image(query_image), k=10, index="shapes-alt")]
    page.wait_for_function("() => document.getElementById('status').textContent.includes('image and text')")
    wait_for_results(page, "shapes-alt")
    assert result_ids(page) == both

    # Removed, then another image dropped on the page: the search runs with the dropped one.
    page.get_by_label("Remove the query image").click()
    assert page.locator("#image-preview").is_hidden()
    dropped = collection.test_images[1]
    page.evaluate("""bytes => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
        const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
        document.body.dispatchEvent(drop);
    }""", list(dropped.read_bytes()))
    page.wait_for_function("() => document.getElementById('image-name').textContent === 'dropped.png'")
    wait_for_results(page, "shapes-alt")
    expected_drop = reference.search(QUERY, load_image(dropped), k=10, index="shapes-alt")
    page.wait_for_function("ids => [...document.querySelectorAll('#results li.result')].map(li => "
                           "Number(li.dataset.id)).join() === ids.join()", arg=[h.id for h in expected_drop],
                           timeout=30_000)
    assert not problems, problems


def test_search_page_asks_for_the_api_key(page, keyed_server, reference):
    """On a server with a key: the page asks for it, says when it is wrong, then searches with it and
    shows thumbnails fetched with it."""
    expected = [hit.id for hit in reference.search(QUERY, k=10, index="shapes")]
    problems: list[str] = []  # script errors (the 401s asked for here are logged by the browser too)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{keyed_server.url}/?q={QUERY.replace(' ', '+')}")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "needs its API key" in page.locator("#key-message").inner_text()
    key = page.get_by_label("API key")
    key.fill("not-the-key")
    key.press("Enter")
    page.wait_for_function("() => document.getElementById('key-message').textContent.includes('wrong')")
    key.fill(keyed_server.key)
    page.get_by_role("button", name="Use the key").click()
    wait_for_results(page, "shapes")
    assert page.locator("#key-form").is_hidden() and result_ids(page) == expected
    wait_for_image(page, "#results li.result img")
    assert page.locator("#results li.result img").first.get_attribute("src").startswith("blob:")
    assert keyed_server.key not in page.url
    assert not problems, problems
