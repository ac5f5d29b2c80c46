"""The annotation page in a real headless Chromium (Debian's `chromium` + `chromium-driver`),
driven by Selenium with real clicks and key presses, then the export of what was done."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import server as server_lib
from rlhfv_jax.annotate import store as store_lib

from .helpers import ANSWERS, LiveServer

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


@pytest.fixture
def serve(tmp_path, image_root):
  """serve(answers) -> (store, server): a live server over a new store holding one item
  per (image, answer), ids "x0", "x1", ..."""
  servers = []

  def start(answers):
    store = store_lib.AnnotationStore(tmp_path / f"store{len(servers)}.sqlite")
    store.image_root = image_root
    store.add_items(store_lib.Item(f"x{i}", image, "Describe the image.", answer)
                    for i, (image, answer) in enumerate(answers))
    servers.append(LiveServer(server_lib.make_app(store, image_root)))
    return store, servers[-1]

  yield start
  for server in servers:
    server.stop()


class Page:
  """The annotation page in `driver`, driven with real clicks and keys."""

  def __init__(self, driver):
    from selenium.webdriver.support.ui import WebDriverWait
    self.driver = driver
    self.wait = WebDriverWait(driver, 15).until

  def element(self, element_id):
    from selenium.webdriver.common.by import By
    return self.driver.find_element(By.ID, element_id)

  def text(self, element_id):
    return self.element(element_id).text

  def marked(self, container, cls):
    """The texts of the highlighted spans, in order (read at once: the page may render
    again between two reads)."""
    return self.driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent)",
        f"#{container} .{cls}")

  def wait_marked(self, struck, added):
    self.wait(lambda d: (self.marked("original", "struck"), self.marked("working", "added"))
              == (struck, added))

  def keys(self, *keys, hold=None):
    from selenium.webdriver.common.action_chains import ActionChains
    chain = ActionChains(self.driver)
    if hold:
      chain.key_down(hold)
    for key in keys:
      chain.send_keys(key)
    if hold:
      chain.key_up(hold)
    chain.perform()

  def word(self, text):
    from selenium.webdriver.common.by import By
    return next(e for e in self.driver.find_elements(By.CSS_SELECTOR, "#working span")
                if e.text == text)

  def start(self, url, name="alice"):
    from selenium.webdriver.common.keys import Keys
    self.driver.get(url)
    self.element("name").clear()
    self.element("name").send_keys(name, Keys.ENTER)

  def ready(self, working):
    """Waits for an item whose corrected answer reads `working`, its image loaded."""
    self.wait(lambda d: self.text("working") == working)
    self.wait(lambda d: self.element("submit").is_enabled())

  def select(self, first, last=""):
    """Double-clicks the word `first`, shift-clicks the word `last` (mouse selection)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def click():  # the text may be re-rendered under the pointer: then try again
      try:
        ActionChains(self.driver).double_click(self.word(first)).perform()
        if last:
          ActionChains(self.driver).key_down(Keys.SHIFT).click(self.word(last)).key_up(
              Keys.SHIFT).perform()
        return True
      except StaleElementReferenceException:
        return False

    self.wait(lambda d: click())

  def select_keys(self, skip, length):
    """Selects `length` characters after the first `skip` with the keyboard only."""
    from selenium.webdriver.common.keys import Keys
    self.driver.execute_script("document.getElementById('working').focus()")
    self.keys(Keys.HOME, hold=Keys.CONTROL)
    self.keys(*[Keys.ARROW_RIGHT] * skip)
    self.keys(*[Keys.ARROW_RIGHT] * length, hold=Keys.SHIFT)

  def correct(self, selected, new):
    """Enter on the selection (which must read `selected`), type `new`, Enter."""
    from selenium.webdriver.common.keys import Keys
    self.wait(lambda d: self.text("fixFrom") == selected)
    self.keys(Keys.ENTER)
    self.wait(lambda d: self.element("fix") == d.switch_to.active_element)
    self.keys(Keys.BACKSPACE if not new else new, Keys.ENTER)

  def free_edit(self, text):
    """E, the whole text replaced by `text` (set by script: the driver cannot type
    characters outside the BMP), Esc."""
    from selenium.webdriver.common.keys import Keys
    self.keys("e")
    editor = self.element("freeEdit")
    self.wait(lambda d: editor.is_displayed())
    self.driver.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input'))", editor, text)
    editor.send_keys(Keys.ESCAPE)
    self.wait(lambda d: not editor.is_displayed())


def _pairs(store, image_root, out):
  export_lib.export(store, image_root, out)
  return {pair["id"]: pair for pair in map(json.loads, (out / "preference" / "train.jsonl")
                                           .read_text().splitlines())}


def _segments(pair):
  return ([pair["rejected"][s:e] for s, e in pair["segments"]["rejected"]],
          [pair["chosen"][s:e] for s, e in pair["segments"]["chosen"]])


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
  ready = lambda d: d.find_element(By.ID, "submit").is_enabled()

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
  wait.until(ready)
  press("s")
  # Item 1 again (still leased to alice): model text with markup stays text; "no
  # hallucination" is one key.
  wait.until(lambda d: text_of("working") == ANSWERS[1][1])
  assert "<script>" in text_of("original")
  assert driver.execute_script("return typeof window.__pwned") == "undefined"
  assert "you: 1" in text_of("progress")
  wait.until(ready)
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


@pytest.mark.slow
def test_highlights_fall_on_the_edited_words_outside_the_bmp(driver, serve, image_root,
                                                             tmp_path):
  """Emoji (two UTF-16 units each), CJK and combining marks before and inside the edits:
  what is struck and highlighted is what was edited, from the page's own edits, from the
  server's diff (free edit) and from the stored spans (revision), and so is the export."""
  answer = "🚗🚕🚙🚌🚎 The red sign is next to 東京タワー and a caf\u00e9\u0301 stand."
  edited = ("🚗🚕🚙🚌🚎 The blue sign is next to 大阪タワー and a th\u00e9 stand.")
  store, server = serve([("coco/1.png", answer)])
  page = Page(driver)
  page.start(server.url)
  page.ready(answer)
  page.select("red")
  page.correct("red", "blue")
  page.wait_marked(["red"], ["blue"])
  page.free_edit(edited)  # two more changes, highlighted by the server's diff
  marked = (["red", "東京", "caf\u00e9\u0301"], ["blue", "大阪", "th\u00e9"])
  page.wait_marked(*marked)
  assert page.text("working") == edited
  page.keys("s")
  page.wait(lambda d: page.element("empty").is_displayed())
  page.keys("b")  # the revision shows the stored spans
  page.ready(edited)
  page.wait_marked(*marked)
  assert _segments(_pairs(store, image_root, tmp_path / "out")["x0@alice"]) == marked


@pytest.mark.slow
def test_spans_are_the_edits_the_annotator_made(driver, serve, image_root, tmp_path):
  """The spans exported are the selections the annotator replaced, not the diff's wider
  ones ("while" stays unmarked); in Chinese one changed character marks one character."""
  light = "A red car waits at a traffic light while two dogs play on the sidewalk."
  chinese = "一只黑色的猫坐在红色的桌子上。"
  store, server = serve([("coco/1.png", light), ("coco/2.png", chinese)])
  page = Page(driver)
  page.start(server.url)
  page.ready(light)
  page.select("waits", "light")
  page.correct("waits at a traffic light", "is parked")
  page.select("two", "play")
  page.correct("two dogs play", "a dog plays")
  corrected = "A red car is parked while a dog plays on the sidewalk."
  marked = (["waits at a traffic light", "two dogs play"], ["is parked", "a dog plays"])
  page.wait_marked(*marked)
  assert page.text("working") == corrected
  page.keys("s")
  page.ready(chinese)
  page.select_keys(2, 1)  # keyboard only: the third character
  page.correct("黑", "白")
  page.wait_marked(["黑"], ["白"])
  page.keys("s")
  page.wait(lambda d: page.element("empty").is_displayed())
  pairs = _pairs(store, image_root, tmp_path / "out")
  assert pairs["x0@alice"]["chosen"] == corrected
  assert _segments(pairs["x0@alice"]) == marked
  assert _segments(pairs["x1@alice"]) == (["黑"], ["白"])


@pytest.mark.slow
def test_an_item_whose_image_cannot_be_shown_cannot_be_judged(driver, serve, image_root,
                                                             tmp_path):
  """A missing image and one refused by the server: a banner says so, S and N are off
  (buttons and keys), K still hands the item on; an image that loads clears it all."""
  (tmp_path / "outside.png").write_bytes((image_root / "coco" / "1.png").read_bytes())
  (image_root / "coco" / "link.png").symlink_to(tmp_path / "outside.png")
  answers = [("coco/missing.png", "A cat sits on a mat."), ("coco/link.png", "A dog runs."),
             ("coco/3.png", "Two birds sing.")]
  store, server = serve(answers)
  page = Page(driver)
  page.start(server.url)
  for done, (_, answer) in enumerate(answers[:2]):
    page.wait(lambda d: page.text("working") == answer)
    page.wait(lambda d: page.element("imageProblem").is_displayed())
    assert "cannot be shown" in page.text("imageProblem")
    assert not page.element("image").is_displayed()
    assert not page.element("submit").is_enabled() and not page.element("clean").is_enabled()
    page.keys("n")
    page.select("A")
    page.correct("A", "One")
    page.keys("s")
    page.wait(lambda d: "image has not loaded" in page.text("status"))
    assert store.num_submissions() == done
    page.keys("u", "k")  # skip: unclear
    page.wait(lambda d: store.num_submissions() == done + 1)
  page.ready(answers[2][1])
  assert not page.element("imageProblem").is_displayed()
  page.keys("n")
  page.wait(lambda d: page.element("empty").is_displayed())
  assert [a.verdict for a in store.annotations()] == ["unclear", "unclear", "no_hallucination"]


@pytest.mark.slow
def test_work_is_never_lost(driver, live_server, store, image_root, tmp_path):
  """Start again, Enter in the name field, a reload, B: the item's corrections stay; B
  steps back through more than the last item and the item in progress keeps its work."""
  from selenium.webdriver.common.keys import Keys
  page = Page(driver)
  page.start(live_server.url)
  page.ready(ANSWERS[0][1])
  page.select("red")
  page.correct("red", "blue")
  fixed = ANSWERS[0][1].replace("red", "blue")
  page.wait_marked(["red"], ["blue"])
  page.element("start").click()
  page.element("name").send_keys(Keys.ENTER)
  time.sleep(1)  # what the page does on Start takes one request; nothing may change
  assert page.text("working") == fixed
  page.wait_marked(["red"], ["blue"])
  assert driver.execute_script(
      "const e = new Event('beforeunload', {cancelable: true});"
      "window.dispatchEvent(e); return e.defaultPrevented")  # the browser warns
  driver.refresh()
  page.element("name").send_keys(Keys.ENTER)
  page.ready(fixed)
  page.wait_marked(["red"], ["blue"])
  page.keys("s")
  page.ready(ANSWERS[1][1])
  page.keys("n")
  page.ready(ANSWERS[2][1])
  page.select("Two")
  page.correct("Two", "Three")
  page.wait_marked(["Two"], ["Three"])
  page.keys("b")  # item 1, then item 0: two steps back
  page.ready(ANSWERS[1][1])
  page.keys("b")
  page.ready(fixed)
  page.wait_marked(["red"], ["blue"])
  page.keys("b")
  page.wait(lambda d: "No earlier item" in page.text("status"))
  page.select("car")
  page.correct("car", "truck")
  page.wait_marked(["red car"], ["blue truck"])
  page.keys("f")  # forward to item 1, and back: the revision in progress is a draft too
  page.ready(ANSWERS[1][1])
  page.keys("b")
  page.ready(fixed.replace("car", "truck"))
  page.keys("s")  # the revision saved, the item in progress is back with its work
  page.ready(ANSWERS[2][1].replace("Two", "Three"))
  page.wait_marked(["Two"], ["Three"])
  page.keys("s")
  page.wait(lambda d: page.element("empty").is_displayed())
  assert store.annotation("item0", "alice").corrected == fixed.replace("car", "truck")
  assert store.annotation("item2", "alice").corrected == ANSWERS[2][1].replace("Two", "Three")
  assert store.num_submissions() == 4
  assert not driver.execute_script(
      "return Object.keys(localStorage).filter((k) => k.startsWith('rlhfv-draft'))")


@pytest.mark.slow
def test_the_workspace_is_hidden_before_start_and_at_the_end(driver, live_server):
  page = Page(driver)
  driver.get(live_server.url)
  page.wait(lambda d: page.element("name").is_displayed())
  assert not page.element("workspace").is_displayed()
  assert not page.element("image").is_displayed()
  page.start(live_server.url)
  for _, answer in ANSWERS:
    page.ready(answer)
    page.keys("k")
  page.wait(lambda d: page.element("empty").is_displayed())
  assert not page.element("workspace").is_displayed()
  assert not page.element("submit").is_displayed()


@pytest.mark.slow
def test_deletions_keyboard_selection_zoom_and_progress(driver, serve):
  """A deleted clause takes its comma and space along; Shift+arrows select; Delete
  deletes; the wheel zooms at the cursor; the counter explains itself."""
  from selenium.webdriver.common.keys import Keys
  answer = "A dog sits behind the car, next to a bicycle. It is sunny."
  store, server = serve([("coco/1.png", answer)])
  page = Page(driver)
  page.start(server.url)
  page.ready(answer)
  page.select("next", "bicycle")
  page.correct("next to a bicycle", "")  # empty: a deletion
  shortened = "A dog sits behind the car. It is sunny."
  page.wait(lambda d: page.text("working") == shortened)
  page.wait_marked([", next to a bicycle"], [])
  page.keys("u")
  page.wait(lambda d: page.text("working") == answer)
  page.select_keys(len("A dog sits behind the car, "), len("next to a bicycle"))
  page.wait(lambda d: page.text("fixFrom") == "next to a bicycle")
  page.keys(Keys.DELETE)
  page.wait(lambda d: page.text("working") == shortened)
  page.wait_marked([", next to a bicycle"], [])

  # The image point under the cursor stays under it as the wheel zooms in.
  under_cursor = """
    const image = document.getElementById('image'), box = image.getBoundingClientRect();
    return [(arguments[0] - box.left) / box.width, (arguments[1] - box.top) / box.height];"""
  box = driver.execute_script(
      "const b = document.getElementById('image').getBoundingClientRect();"
      "return [b.left, b.top, b.width, b.height]")
  x, y = box[0] + 0.7 * box[2], box[1] + 0.8 * box[3]
  for _ in range(3):
    driver.execute_script(
        "document.getElementById('viewport').dispatchEvent(new WheelEvent('wheel', "
        "{deltaY: -100, clientX: arguments[0], clientY: arguments[1], bubbles: true, "
        "cancelable: true}))", x, y)
  assert page.text("zoomLevel") == "195%"
  # Across: the image is wider than the viewport from the first step, so the point holds
  # (zooming at the top-left corner would put 0.36 there). Down: only once it is taller.
  assert driver.execute_script(under_cursor, x, y)[0] == pytest.approx(0.7, abs=0.01)
  assert "open for you" in page.text("progress")
  assert "not annotated yet" in page.element("progress").get_attribute("title")


def _propose(store, labeler, proposals):
  """`labeler` annotates through leases, as the `label` stage does: item id -> (verdict,
  corrected, edits)."""
  while (lease := store.next_item(labeler)) is not None:
    verdict, corrected, edits = proposals[lease.item.id]
    store.submit(labeler, lease.item.id, verdict, corrected, lease_token=lease.token,
                 submission_id=f"{labeler}/{lease.item.id}", edits=edits)


@pytest.mark.slow
def test_ai_proposals_are_prefilled_marked_and_accepted_with_one_key(driver, serve):
  """x0: the AI's correction is pre-filled, labelled and highlighted; A makes it alice's
  annotation. x1: alice edits the proposal: A refuses, S stores her edit. x2: N overrules
  an untouched AI correction. x3 has no proposal: no label, no A."""
  labeler = "ai:llava-1.5-7b"
  car = "There is a red car next to a dog on the street."
  answers = [("coco/1.png", car), ("coco/2.png", "A cat sleeps on a sofa."),
             ("coco/3.png", "Two birds sing."), ("coco/1.png", "A bus waits.")]
  store, server = serve(answers)
  red, gone = car.index("red"), car.index(" next to a dog")
  proposed = "There is a blue car on the street."
  _propose(store, labeler, {
      "x0": ("corrected", proposed,
             [((red, red + 3), (red, red + 4)), ((gone, gone + 14), (gone + 1, gone + 1))]),
      "x1": ("corrected", "A cat sleeps on a bed.", None),
      "x2": ("corrected", "Three birds sing.", None),
      "x3": ("unclear", None, None)})  # not a proposal
  ai = store.annotation("x0", labeler)
  page = Page(driver)
  page.start(server.url)

  page.ready(proposed)
  assert page.text("proposalBy") == f"AI proposal by {labeler}"
  assert page.element("proposal").is_displayed() and page.element("accept").is_displayed()
  assert "proposal" in page.element("working").get_attribute("class")
  page.wait_marked(["red", "next to a dog"], ["blue"])
  page.keys("a")
  page.ready("A cat sleeps on a bed.")
  mine = store.annotation("x0", "alice")
  assert (mine.verdict, mine.corrected) == ("corrected", proposed)
  assert (mine.rejected_spans, mine.chosen_spans) == (ai.rejected_spans, ai.chosen_spans)
  assert store.annotation("x0", labeler) == ai  # the AI's own stays as it was

  page.wait_marked(["sofa"], ["bed"])
  page.select("cat")
  page.correct("cat", "dog")
  page.wait_marked(["cat", "sofa"], ["dog", "bed"])
  page.wait(lambda d: "you changed it" in page.text("proposal"))
  assert "proposal" not in page.element("working").get_attribute("class")
  page.keys("a")
  page.wait(lambda d: "no longer the AI proposal" in page.text("status"))
  assert store.annotation("x1", "alice") is None
  page.keys("s")
  page.ready("Three birds sing.")
  mine = store.annotation("x1", "alice")
  assert mine.corrected == "A dog sleeps on a bed."
  assert [mine.original[s:e] for s, e in mine.rejected_spans] == ["cat", "sofa"]
  assert store.annotation("x1", labeler).corrected == "A cat sleeps on a bed."

  page.keys("n")  # the answer was right: the AI's "Three" is overruled
  page.ready("A bus waits.")
  assert store.annotation("x2", "alice").verdict == "no_hallucination"
  assert not page.element("proposal").is_displayed()
  assert not page.element("accept").is_displayed()
  page.keys("a")
  page.wait(lambda d: "no AI proposal" in page.text("status"))
  page.keys("n")
  page.wait(lambda d: page.element("empty").is_displayed())
  assert [a.annotator for a in store.annotations() if a.item_id == "x3"] == [labeler, "alice"]
