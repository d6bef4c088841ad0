"""The annotator's screen in a real browser: headless Chromium drives Label Studio 1.23.2 with the backend behind it.

An annotator opens the backend's queue tab and labels the four most uncertain tickets as a person would: accepting
the suggestion, taking the second suggestion, and a department outside the top-3 (the right one where the model
missed it) found through the filter, then by a click in the list. Each answer must reach the backend's store with the
right accepted/corrected flag and the annotator's email. The test counts the
keystrokes and clicks per ticket, prints them, and saves the screenshots the README shows (docs/screenshots/).

Chromium, its driver and CJK fonts come from Debian (tests/setup_system.sh, run by `make test`); without them the
test is skipped and says why.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from annotation_config.labeling_config import QUEUE_TAB_TITLE
from backend.annotator_view import PRIORITY_FIELD, SUGGESTED_FIELD, AnnotatorView
from core.labeling import parse_label_config
from core.people import is_user_id
from tests.helpers import LABEL_CONFIG, SAMPLES, repo_root, wait_until
from tools import local_label_studio

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1366, 768)
SCREENSHOTS = repo_root() / "docs" / "screenshots"
SPACE = parse_label_config(LABEL_CONFIG)
# What each department choice is called on the page (its value: name and aliases, which the filter searches) and
# what it submits, in the list's order.
CHOICES = {c.get("value"): c.get("alias") or c.get("value")
           for e in ET.fromstring(LABEL_CONFIG).iter("Choices") if e.get("name") == SPACE.department_control for c in e.iter("Choice")}


@pytest.fixture
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"no browser: {', '.join(missing)} missing; `make test` installs Debian's chromium, chromium-driver and "
                    "fonts-noto-cjk through tests/setup_system.sh, which printed why it could not")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.skip(f"selenium is not installed ({exc}); it is pinned in requirements.txt")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # No internet here: without the background-networking switches Chromium keeps dialling out and logging refusals.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Annotator:
    """Drives the page as a person does, counting every keystroke (a chord such as Ctrl+Enter is one) and click."""

    def __init__(self, driver):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver, self.chain, self.by, self.keys = driver, ActionChains, By, Keys
        self.actions = 0

    def press(self, key: str, *modifiers: str) -> None:
        chain = self.chain(self.driver)
        for modifier in modifiers:
            chain = chain.key_down(modifier)
        chain = chain.send_keys(key)
        for modifier in reversed(modifiers):
            chain = chain.key_up(modifier)
        chain.perform()
        self.actions += 1

    def type(self, text: str) -> None:
        for character in text:
            self.chain(self.driver).send_keys(character).perform()
            self.actions += 1

    def click(self, element) -> None:
        element.click()
        self.actions += 1

    def submit(self) -> None:
        self.press(self.keys.ENTER, self.keys.CONTROL)

    # -- reading the page (not counted) -------------------------------------------------------------------
    def find(self, css: str):
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def checked(self, control_class: str) -> list[str]:
        return [e.get_attribute("name") for e in self.find(f".{control_class} .ant-checkbox-wrapper-checked input")]

    def ticket(self) -> str:
        tickets = self.find(".annotator-screen .ticket")
        return tickets[0].text.strip() if tickets else ""

    def wait_for_ticket(self, previous: str = "") -> str:
        """The next task is on screen: its ticket differs from `previous` and its suggestion row has loaded."""
        return wait_until(lambda: (t := self.ticket()) and t != previous and self.find(".suggestions .ant-checkbox-wrapper") and t,
                          timeout=60, interval=0.2, what="the next ticket on screen")


def log_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/user/login/")
    driver.find_element(By.NAME, "email").send_keys(local_label_studio.ADMIN_EMAIL)
    driver.find_element(By.NAME, "password").send_keys(local_label_studio.ADMIN_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait_until(lambda: "/user/login" not in driver.current_url, timeout=30, what="login")


def filter_text(department: str) -> str:
    """The shortest text (name or alias) that makes `department` the first choice the filter leaves visible."""
    searchable = next(value.lower() for value, name in CHOICES.items() if name == department)
    for length in (1, 2, 3):
        for start in range(len(searchable) - length + 1):
            text = searchable[start:start + length]
            if " " not in text and next(name for value, name in CHOICES.items() if text in value.lower()) == department:
                return text
    raise AssertionError(f"no filter of at most 3 characters finds {department} first")


def outside_top3(right: str, suggestions: list[str]) -> str:
    """The right department when the model missed it, else one the model did not suggest (the case must be exercised)."""
    return right if right not in suggestions else next(d for d in ("市住房公积金管理中心", "市气象局", "市档案馆") if d not in suggestions)


def inside_viewport(driver, css: str) -> list[str]:
    """Elements matching `css` that are not wholly visible: outside the window or under Label Studio's bottom bar."""
    return driver.execute_script("""
        const bar = Array.from(document.querySelectorAll('button')).find(b => b.textContent.trim() === 'Submit');
        const bottom = Math.min(window.innerHeight, bar ? bar.getBoundingClientRect().top : window.innerHeight);
        // the suggestion row's hidden list of every department is there for Label Studio's validation only
        return Array.from(document.querySelectorAll(arguments[0])).filter(e => !e.closest('[style*="display: none"]')).filter(e => {
            const r = e.getBoundingClientRect();
            return r.width === 0 || r.top < 0 || r.left < 0 || r.right > window.innerWidth || r.bottom > bottom;
        }).map(e => e.textContent.trim() || e.outerHTML.slice(0, 80));
    """, css)


def shot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / name))


def test_an_annotator_labels_the_queue_with_few_actions(label_studio, start_backend, browser):
    backend = start_backend()
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id = ls.projects.create(title="12345 browser", label_config=LABEL_CONFIG).id
    mine = label_studio.api("POST", "/api/dm/views", json={"project": project_id, "data": {
        "title": "我的 Mine", "ordering": ["-tasks:id"], "filters": {"conjunction": "and", "items": []}}}).json()
    ls.ml.create(url=backend.url, project=project_id, title="router")  # /setup: the backend adds its tab
    tickets = SAMPLES[:12]
    ls.projects.import_tasks(id=project_id, request=[{"text": t["text"]} for t in tickets])
    job = requests.post(f"{backend.url}/preannotate", json={"project": project_id}, timeout=10).json()["job"]
    wait_until(lambda: requests.get(f"{backend.url}/jobs/{job}", timeout=5).json()["finished"], timeout=300, interval=0.5,
               what="pre-annotation")
    requests.post(f"{backend.url}/setup", json={"project": f"{project_id}.1", "schema": LABEL_CONFIG}, timeout=5)
    wait_until(lambda: requests.get(f"{backend.url}/status", timeout=5).json()["background_idle"], what="the backend's background work")

    # The tab exists once however often the backend connects, and the user's own tab is as it was.
    views = label_studio.api("GET", "/api/dm/views", params={"project": project_id}).json()
    tabs = [v for v in views if v["data"].get("title") == QUEUE_TAB_TITLE]
    assert len(tabs) == 1 and tabs[0]["data"]["ordering"] == [f"tasks:data.{PRIORITY_FIELD}"]
    assert next(v for v in views if v["id"] == mine["id"])["data"] == mine["data"]
    tab = tabs[0]["id"]
    queue = label_studio.api("GET", "/api/tasks", params={"project": project_id, "view": tab, "fields": "all"}).json()["tasks"]
    priorities = [t["data"][PRIORITY_FIELD] for t in queue]
    assert priorities == sorted(priorities)
    # A young model: TypiClust's order over the waiting tickets (annotator_view.py), the same whoever computes it.
    places = AnnotatorView(lambda: None).young_places([t["id"] for t in queue], [t["data"]["text"] for t in queue], [],
                                                     len(SPACE.departments))
    assert priorities == [round(places[t["id"]], 6) for t in queue]
    assert all(t["data"][SUGGESTED_FIELD] == t["data"][SPACE.suggestion_keys[0]] for t in queue)
    gold = {t["text"]: t["department"] for t in tickets}

    # "Label Tasks As Displayed" serves the tab's order; a priority another strategy writes moves a ticket up.
    promoted = queue[-1]
    ls.tasks.update(id=promoted["id"], data={**promoted["data"], PRIORITY_FIELD: -1})
    served = label_studio.api("POST", "/api/dm/actions", params={"project": project_id, "id": "next_task"},
                              json={"ordering": [f"tasks:data.{PRIORITY_FIELD}"], "filters": {"conjunction": "and", "items": []}}).json()
    assert (served["id"], served["queue"]) == (promoted["id"], "Data manager queue")
    ls.tasks.update(id=promoted["id"], data=promoted["data"])

    driver, person = browser, Annotator(browser)
    log_in(driver, label_studio.url)
    driver.get(f"{label_studio.url}/projects/{project_id}/data?tab={tab}")
    wait_until(lambda: queue[0]["data"]["text"][:10] in driver.find_element(person.by.TAG_NAME, "body").text, timeout=60,
               what="the queue in the tab")
    shot(driver, "queue_tab.png")
    toggle = wait_until(lambda: driver.find_elements(person.by.CSS_SELECTOR, "button[aria-label='Toggle open']"), what="the label menu")
    toggle[0].click()
    wait_until(lambda: driver.find_elements(person.by.XPATH, "//*[text()='Label Tasks As Displayed']"), what="the menu")[0].click()

    counts, labelled = {}, []
    # 1. The most uncertain ticket: its suggestion, the tab, the list and the filter on one screen, nothing editable
    #    but the filter and the rationale; accepting the suggestion is one keystroke.
    ticket = person.wait_for_ticket()
    task = queue[0]
    assert ticket == task["data"]["text"]
    suggestions = [task["data"][key] for key in SPACE.suggestion_keys]
    assert person.checked("suggestions") == suggestions[:1] and person.checked("all-departments") == []
    for css in (".annotator-screen .ticket", ".suggestions label", ".all-departments input", ".department-group .lsf-choice"):
        assert person.find(css) and inside_viewport(driver, css) == [], f"{css} is not all visible at {WINDOW}"
    assert len(person.find(".department-group .lsf-choice")) == len(SPACE.departments)
    assert person.find(".suggestions")[0].text.count("%") == len(SPACE.suggestion_keys)
    editable = person.find(".annotator-screen textarea, .annotator-screen input:not([type=checkbox]), .annotator-screen [contenteditable=true]")
    assert sorted(e.get_attribute("placeholder")[:2] for e in editable) == ["理由", "筛选"]  # the rationale, and the filter box
    shot(driver, "suggestion_preselected.png")
    person.actions = 0
    person.submit()
    counts["accept the top suggestion"] = person.actions
    labelled.append((task, suggestions[0], True))

    # 2. The second suggestion: one key.
    ticket = person.wait_for_ticket(ticket)
    task = queue[1]
    assert ticket == task["data"]["text"]
    suggestions = [task["data"][key] for key in SPACE.suggestion_keys]
    person.actions = 0
    person.press("2")
    assert person.checked("suggestions") == [suggestions[1]]
    shot(driver, "second_suggestion.png")
    person.submit()
    counts["choose suggestion #2"] = person.actions
    labelled.append((task, suggestions[1], False))

    # 3. A department outside the top-3 (the right one if the model missed it): Shift+F, a few characters, Enter.
    ticket = person.wait_for_ticket(ticket)
    task = queue[2]
    assert ticket == task["data"]["text"]
    suggestions = [task["data"][key] for key in SPACE.suggestion_keys]
    target = outside_top3(gold[task["data"]["text"]], suggestions)
    text = filter_text(target)
    person.actions = 0
    person.press("F", person.keys.SHIFT)
    person.type(text)
    shot(driver, "filter.png")
    typed = len(text)
    person.press(person.keys.ENTER)
    assert [CHOICES[v] for v in person.checked("all-departments")] == [target]
    person.click(next(b for b in driver.find_elements(person.by.TAG_NAME, "button") if b.text.strip() == "Submit"))
    counts[f"outside the top-3 ({target} through the filter {text!r})"] = person.actions
    labelled.append((task, target, False))

    # 4. A department outside the top-3 found by eye: one click in the list.
    ticket = person.wait_for_ticket(ticket)
    task = queue[3]
    assert ticket == task["data"]["text"]
    target = outside_top3(gold[task["data"]["text"]], [task["data"][key] for key in SPACE.suggestion_keys])
    person.actions = 0
    labels = {CHOICES[e.find_element(person.by.TAG_NAME, "input").get_attribute("name")]: e for e in person.find(".department-group label")}
    person.click(labels[target])
    person.submit()
    counts[f"outside the top-3 ({target} clicked in the list)"] = person.actions
    labelled.append((task, target, False))
    person.wait_for_ticket(ticket)

    # Every answer is in the backend's store: the department, accepted or corrected, and who, by email.
    for task, department, accepted in labelled:
        annotation = wait_until(lambda task=task: label_studio.api("GET", f"/api/tasks/{task['id']}/annotations/").json(),
                                what=f"the annotation of task {task['id']}")[0]
        # the label is stored when the webhook arrives; the annotator's name follows from Label Studio's users
        label = wait_until(lambda annotation=annotation: (l := backend.store().get_label(annotation["id"])) and not is_user_id(l.annotator) and l,
                           what="the gold label with its annotator's name")
        assert (label.department, label.accepted, label.annotator) == (department, int(accepted), local_label_studio.ADMIN_EMAIL), backend.log()
        assert label.shown_department == task["data"][SUGGESTED_FIELD]
    status = requests.get(f"{backend.url}/status", timeout=5).json()
    assert status["annotators"] == {local_label_studio.ADMIN_EMAIL: len(labelled)}

    print("\nactions per ticket (keystrokes + clicks, submit included): " + json.dumps(counts, ensure_ascii=False))
    assert list(counts.values()) == [1, 2, 3 + typed, 2] and typed <= 3
