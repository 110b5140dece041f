"""End to end in headless Chromium: a labeller labels with clicks and keys.

Drives Debian's `chromium` with its `chromedriver` (install both with
`bash scripts/install_browser.sh`) through selenium against a live server on
127.0.0.1 with a shared token. The labeller enters their id, marks wrong
tokens (click, shift-click range, click-to-unmark, drag), picks with a key and
submits with Enter, picks a pairwise item with the mouse, skips one with S;
then the SQLite rows and the exported LHP JSON must say exactly that.
"""

import json
import os
import shutil

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from rlhf_jax.labelling.label_server import Item, LabelDB, export_lhp
from tests.label_server_fixtures import serve, token_item

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "e2e-token"
HOSTILE = '<img src=x onerror="window.__xss=1"> Once upon a time'


@pytest.fixture(scope="module")
def driver():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            pytest.fail(f"{path} is missing: run `bash scripts/install_browser.sh` "
                        "(Debian packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield d
    d.quit()


def wait_for(driver, condition, what, timeout=30):
    return WebDriverWait(driver, timeout, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(
            lambda d: condition(d), message=f"waiting for {what}")


def item_shown(item_id):
    # One script reads the attribute: the page swaps #item between a find and a
    # read, and Chrome then reports "Node ... does not belong to the document",
    # which no ignored exception covers.
    return lambda d: d.execute_script(
        "const e = document.getElementById('item');"
        "return e && e.getAttribute('data-item-id');") == str(item_id)


def tok(driver, j, i):
    return driver.find_element(By.CSS_SELECTOR, f'#sample-{j} .tok[data-i="{i}"]')


def marked(driver):
    return sorted((int(e.find_element(By.XPATH, "./ancestor::article").get_attribute("data-j")),
                   int(e.get_attribute("data-i")))
                  for e in driver.find_elements(By.CSS_SELECTOR, ".tok.marked"))


def test_label_with_clicks_and_keys_then_check_rows_and_export(driver, tmp_path):
    db = LabelDB(tmp_path / "labels.sqlite")
    five = [[20 + j * 5 + t for t in range(5)] for j in range(4)]
    plain = token_item([1, 2, 3], five)
    hostile = Item("best_of_n", HOSTILE, plain.responses, query_tokens=(1, 2, 3))
    # Items: 1 best-of-4, 2 best-of-4 with a hostile query, 3 pairwise.
    db.add_items("best_of_4", [plain, hostile])
    db.add_items("pairwise", [token_item([4, 5], [[60, 61], [62, 63, 64]], "pairwise")])

    with serve(db, token=TOKEN) as base:
        driver.get(f"{base}/?token={TOKEN}")
        box = wait_for(driver, lambda d: d.find_element(By.ID, "labeler"), "the id form")
        box.send_keys("e2e_user", Keys.ENTER)
        wait_for(driver, item_shown(1), "item 1")
        assert driver.find_element(By.ID, "who").text == "e2e_user"
        assert "0 of 3 answered" in driver.find_element(By.ID, "progress-text").text

        # Span marks: click + shift-click (a range), click twice (unmarked), a drag.
        ActionChains(driver).click(tok(driver, 0, 1)).key_down(Keys.SHIFT).click(
            tok(driver, 0, 3)).key_up(Keys.SHIFT).perform()
        tok(driver, 2, 4).click()
        tok(driver, 2, 4).click()
        tok(driver, 2, 0).click()
        ActionChains(driver).click_and_hold(tok(driver, 3, 2)).move_to_element(
            tok(driver, 3, 4)).release().perform()
        assert marked(driver) == [(0, 1), (0, 2), (0, 3), (2, 0), (3, 2), (3, 3), (3, 4)]
        ActionChains(driver).send_keys("3").perform()  # choose response 3
        assert "chosen" in driver.find_element(By.ID, "sample-2").get_attribute("class")
        shot = tmp_path / "label_server.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        ActionChains(driver).send_keys(Keys.ENTER).perform()

        # Item 2: the hostile query is shown as text, never run.
        wait_for(driver, item_shown(2), "item 2")
        assert driver.find_element(By.ID, "query").text == HOSTILE
        assert driver.execute_script("return window.__xss") is None
        assert driver.find_elements(By.CSS_SELECTOR, "#query img") == []
        assert "1 of 3 answered" in driver.find_element(By.ID, "progress-text").text
        ActionChains(driver).send_keys("s").perform()  # skip

        # Item 3, pairwise: the mouse picks response 2, the Submit button sends it.
        wait_for(driver, item_shown(3), "item 3")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Which response is better?"
        submit = driver.find_element(By.ID, "submit")
        assert not submit.is_enabled()
        driver.find_element(By.CSS_SELECTOR, '#sample-1 .choose').click()
        submit.click()

        wait_for(driver, lambda d: d.find_element(By.ID, "empty"), "the empty page")
        assert ("2 of 3 answered · 1 open · you: 2"
                in driver.find_element(By.ID, "progress-text").text)

    answers = {item.id: a for item, a in db.answers()}
    assert sorted(answers) == [1, 3]
    assert (answers[1].labeler, answers[1].choice, answers[1].source) == ("e2e_user", 2, "web")
    assert answers[1].spans == ({"response": 0, "start": 1, "end": 4},
                                {"response": 2, "start": 0, "end": 1},
                                {"response": 3, "start": 2, "end": 5})
    assert (answers[3].labeler, answers[3].choice, answers[3].spans) == ("e2e_user", 1, ())
    assert [(i, name) for i, name, _ in db.skips()] == [(2, "e2e_user")]
    assert db.item(2).status == "open"  # one skip of max_skips=3: still open for others

    out = tmp_path / "labels.json"
    assert export_lhp(db, out, batch="best_of_4") == 1
    [rec] = json.loads(out.read_text())
    assert rec["best"] == 2 and rec["labeler"] == "e2e_user" and rec["item_id"] == 1
    assert rec["spans"] == [[[1, 4]], [], [[0, 1]], [[2, 5]]]
    assert rec["query"] == [1, 2, 3] and rec["sample0"] == five[0]
