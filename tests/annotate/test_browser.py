"""The annotation page in a real headless Chromium (Debian's `chromium` + `chromium-driver`),
driven by Selenium with real clicks and key presses, then the export of what was done."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rlhfv_jax.annotate import export as export_lib

from .helpers import ANSWERS

REQUIRE_BROWSER_VAR = "RLHFV_REQUIRE_BROWSER"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def driver():
  if not (CHROMIUM and CHROMEDRIVER):
    message = ("needs Chromium and its driver: apt-get install chromium chromium-driver "
               "(Debian/Ubuntu packages; browser downloads cannot work offline)")
    if os.environ.get(REQUIRE_BROWSER_VAR) == "1":
      pytest.fail(message)
    pytest.skip(message)
  from selenium import webdriver
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                   "--disable-gpu", "--window-size=1400,1000"):
    options.add_argument(argument)
  browser = webdriver.Chrome(options=options,
                             service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
  yield browser
  browser.quit()


@pytest.mark.slow
def test_annotate_in_a_real_browser_then_export(driver, live_server, store, image_root,
                                                tmp_path):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait

  wait = WebDriverWait(driver, 15)
  text_of = lambda element_id: driver.find_element(By.ID, element_id).text
  press = lambda keys: ActionChains(driver).send_keys(keys).perform()

  def word(container: str, text: str):
    return next(e for e in driver.find_elements(By.CSS_SELECTOR, f"#{container} span")
                if e.text == text)

  def correct(old: str, new: str, extend_to: str = "", selected: str = ""):
    ActionChains(driver).double_click(word("working", old)).perform()
    if extend_to:  # shift-click extends the selection
      ActionChains(driver).key_down(Keys.SHIFT).click(word("working", extend_to)).key_up(
          Keys.SHIFT).perform()
    selected = selected or old
    wait.until(lambda d: d.find_element(By.ID, "fixFrom").text == selected)
    press(Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "fix") == d.switch_to.active_element)
    assert driver.find_element(By.ID, "fix").get_attribute("value") == selected
    press(new + Keys.ENTER)

  driver.get(live_server.url)
  driver.find_element(By.ID, "name").send_keys("alice", Keys.ENTER)
  wait.until(lambda d: text_of("working") == ANSWERS[0][1])
  # The image is shown whole: loaded, and scaled to fit the viewport (never cropped).
  wait.until(lambda d: d.execute_script(
      "const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0"))
  shown = driver.execute_script(
      "const i = document.getElementById('image'), v = document.getElementById('viewport');"
      "return [i.clientWidth, i.clientHeight, v.clientWidth, v.clientHeight]")
  assert shown[0] <= shown[2] and shown[1] <= shown[3] and shown[0] > 0
  assert "you: 0" in text_of("progress")

  # Item 0: select "red", type its correction; both sides highlight as it happens.
  correct("red", "blue")
  fixed = "There is a blue car next to a dog on the street."
  revised = "There is a blue car on the street."
  wait.until(lambda d: text_of("working") == fixed)
  wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#working .added")]
             == ["blue"])
  assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#original .struck")] == ["red"]
  # A second correction of two words, undone with the U key.
  correct("next", "behind a cat", extend_to="dog", selected="next to a dog")
  wait.until(lambda d: "car behind a cat on the street" in text_of("working"))
  press("u")
  wait.until(lambda d: text_of("working") == fixed)
  driver.save_screenshot(str(tmp_path / "annotate.png"))
  press("s")

  # Item 1 comes next; B goes back to item 0 to revise it, E edits the text freely.
  wait.until(lambda d: text_of("working") == ANSWERS[1][1])
  press("b")
  wait.until(lambda d: text_of("working") == fixed)
  press("e")
  editor = driver.find_element(By.ID, "freeEdit")
  wait.until(lambda d: editor.is_displayed())
  editor.send_keys(Keys.CONTROL, "a")
  editor.send_keys(revised)
  editor.send_keys(Keys.ESCAPE)
  wait.until(lambda d: not editor.is_displayed() and text_of("working") == revised)
  press("s")
  # Item 1 again (still leased to alice): model text with markup stays text; "no
  # hallucination" is one key.
  wait.until(lambda d: text_of("working") == ANSWERS[1][1])
  assert "<script>" in text_of("original")
  assert driver.execute_script("return typeof window.__pwned") == "undefined"
  assert "you: 1" in text_of("progress")
  press("n")

  # Item 2: skip as unclear; then nothing is left.
  wait.until(lambda d: text_of("working") == ANSWERS[2][1])
  press("k")
  wait.until(lambda d: d.find_element(By.ID, "empty").is_displayed())
  assert "you: 3" in text_of("progress")

  report = export_lib.export(store, image_root, tmp_path / "export")
  assert (report["pairs"], report["no_hallucination"], report["unclear"]) == (1, 1, 1)
  (pair,) = [json.loads(line) for line in
             (tmp_path / "export" / "preference" / "train.jsonl").read_text().splitlines()]
  assert (pair["rejected"], pair["chosen"]) == (ANSWERS[0][1], revised)
  assert [pair["rejected"][s:e] for s, e in pair["segments"]["rejected"]] == [
      "red", "next to a dog"]
  assert [pair["chosen"][s:e] for s, e in pair["segments"]["chosen"]] == ["blue"]
  assert (pair["origin"]["annotator"], pair["origin"]["revision"]) == ("alice", "2")
  assert store.num_submissions() == 4  # item 0 twice (a revision), items 1 and 2
