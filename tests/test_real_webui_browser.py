"""Optional tier: the panel in a real AUTOMATIC1111 WebUI (1.8 or newer), driven in headless Chromium.

Skipped unless WEBUI_DIR names an A1111 checkout as for tests/test_real_webui.py, selenium is installed in the test
environment and Chromium with its driver is found (CHROMIUM / CHROMEDRIVER, else `chromium` and `chromedriver` on
PATH; Debian's packages `chromium` and `chromium-driver`). The WebUI runs with its UI on the tiny models, plus an
SD1.5-family adapter that does not fit the loaded checkpoint. With WEBUI_SCREENSHOTS set to a folder, each check
saves a screenshot of what it looked at there. See tests/real_webui_setup.md.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.real_webui import FACE_CENTRE, FACE_SIDE, SKIP_WITHOUT_WEBUI, running_webui

pytestmark = SKIP_WITHOUT_WEBUI

PANEL = "script_txt2img_instantid_"
WAIT_S = 120


def write_photo(path: Path, face: tuple | None) -> str:
    """A 256x256 photo with a face the synthetic detector finds at `face` ((centre, side, colour)), or none."""
    from tests.fixtures.face_models import paint_marker

    pixels = np.full((256, 256, 3), 90, np.uint8)
    if face is not None:
        pixels = paint_marker(pixels, *face)
    Image.fromarray(pixels).save(path)
    return str(path)


def add_a_model_of_another_family(models: Path) -> None:
    from tests.fixtures import tiny_models as tm

    tm.write_adapter(models / "instantid" / "ip-adapter_sd15.safetensors", "sd15", fmt="safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_webui(tmp_path_factory.mktemp("real_webui_ui"), with_ui=True,
                       prepare=add_a_model_of_another_family) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("photos")
    return {"face": write_photo(folder / "face.png", (FACE_CENTRE, FACE_SIDE, "cyan")),
            "other": write_photo(folder / "other.png", ((100, 140), 60, "magenta")),
            "no face": write_photo(folder / "no_face.png", None)}


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tier needs selenium")
    from selenium.webdriver.chrome.service import Service

    binary = os.environ.get("CHROMIUM") or shutil.which("chromium")
    driver_path = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.skip("the browser tier needs Chromium and chromedriver (CHROMIUM / CHROMEDRIVER, or on PATH)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,2600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """txt2img in the browser with the InstantID panel open."""

    def __init__(self, driver, url: str, shots: str | None):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by, self.shots = driver, By, shots
        self.wait = lambda condition, timeout=WAIT_S: WebDriverWait(driver, timeout).until(lambda _: condition())
        driver.get(url + "/?__theme=light")
        self.wait(lambda: driver.find_elements(By.ID, "txt2img_generate"))
        self.click(self.css(f"#{PANEL}enabled .label-wrap"))
        self.wait(lambda: self.shown("lead"))

    def el(self, name: str):
        """A panel element by its name (the end of its id), or any element by its whole id."""
        found = self.driver.find_elements(self.by.ID, PANEL + name) or self.driver.find_elements(self.by.ID, name)
        assert found, f"no element {name}"
        return found[0]

    def css(self, selector: str, within=None):
        return (within or self.driver).find_element(self.by.CSS_SELECTOR, selector)

    def shown(self, name: str) -> bool:
        return self.el(name).is_displayed()

    def click(self, element) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def value(self, name: str, selector: str = "input") -> str:
        return self.css(selector, self.el(name)).get_attribute("value")

    def choose(self, name: str, option: str) -> None:
        self.click(self.css("input", self.el(name)))
        self.wait(lambda: self._option(option))
        self.click(self._option(option))
        self.wait(lambda: self.value(name) == option)

    def _option(self, text: str):
        return next((o for o in self.driver.find_elements(self.by.CSS_SELECTOR, "ul.options li")
                     if o.text.strip().endswith(text)), None)

    def options(self, name: str) -> list[str]:
        self.click(self.css("input", self.el(name)))
        self.wait(lambda: self.driver.find_elements(self.by.CSS_SELECTOR, "ul.options li"))
        return [o.text.replace("✓", "").strip() for o in self.driver.find_elements(self.by.CSS_SELECTOR, "ul.options li")]

    def upload(self, name: str, *paths: str) -> None:
        self.css("input[type=file]", self.el(name)).send_keys("\n".join(paths))

    def images(self, name: str) -> int:
        return len(self.el(name).find_elements(self.by.TAG_NAME, "img"))

    def open_fold(self, name: str) -> None:
        self.click(self.css(".label-wrap", self.el(name)))

    def generate(self) -> None:
        """Generate, small and short: the tiny checkpoint at the default 512 x 512 and 20 steps takes long on a CPU."""
        from selenium.webdriver.common.keys import Keys

        for name, value in (("txt2img_width", 128), ("txt2img_height", 128), ("txt2img_steps", 4)):
            number = self.css("input[type=number]", self.el(name))
            number.clear()
            number.send_keys(str(value), Keys.TAB)
        self.click(self.el("txt2img_generate"))

    def shot(self, label: str, name: str = "enabled") -> None:
        if self.shots:
            element = self.el(name)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
            time.sleep(0.5)  # let the scroll settle
            Path(self.shots).mkdir(parents=True, exist_ok=True)
            element.screenshot(str(Path(self.shots) / f"{label}.png"))


@pytest.fixture
def page(server, browser) -> Page:
    return Page(browser, server.url, os.environ.get("WEBUI_SCREENSHOTS"))


def test_the_panel_leads_with_the_photos_and_the_two_weights(page):
    assert "Drop a clear photo" in page.el("lead").text
    for name in ("face_image", "identitynet_weight", "adapter_weight", "style_faithful", "style_stylised", "preview"):
        assert page.shown(name), name
    for name in ("identitynet_start", "face_region", "uncond_noise", "similarity", "person1_region"):
        assert not page.shown(name), f"{name} is not folded"
    for name in ("thumbnails", "remove_photo", "preview_gallery", "scores"):
        assert not page.shown(name), f"{name} shows with nothing in it"
    # The panel was built while the checkpoint loaded; turned on, it finds the installed models fit: none missing.
    page.wait(lambda: not page.shown("missing") and not page.shown("download"), timeout=30)
    page.shot("1_panel")


def test_face_photos_show_as_thumbnails_and_one_can_be_removed(page, photos):
    page.upload("face_image", photos["face"], photos["other"])
    page.wait(lambda: page.images("thumbnails") == 2)
    page.click(page.el("thumbnails").find_elements(page.by.TAG_NAME, "button")[1])
    page.wait(lambda: page.shown("remove_photo"))
    assert page.el("remove_photo").text == "Remove photo 2"
    page.shot("2_thumbnail_chosen")
    page.click(page.el("remove_photo"))
    page.wait(lambda: "other.png" not in page.el("face_image").text)
    assert "face.png" in page.el("face_image").text
    page.wait(lambda: page.images("thumbnails") == 1 and not page.shown("remove_photo"))
    page.shot("3_photo_removed")


def test_a_style_preset_sets_the_two_weights(page):
    page.click(page.el("style_stylised"))
    page.wait(lambda: page.value("adapter_weight", "input[type=number]") == "0.5")
    assert page.value("identitynet_weight", "input[type=number]") == "0.6"


def test_preview_shows_the_face_and_the_keypoints_of_a_chosen_pose(page, photos):
    page.upload("face_image", photos["face"])
    page.choose("pose", "three-quarter left")
    page.wait(lambda: page.shown("pose_box") and not page.shown("pose_image"))
    page.click(page.el("preview"))
    page.wait(lambda: page.shown("preview_gallery") and page.images("preview_gallery") == 2)
    assert "three-quarter left" in page.el("enabled").text and "1 face(s) found" in page.el("enabled").text
    page.shot("4_pose_preview")


def test_each_person_slot_shows_its_own_default_region(page):
    page.open_fold("people")
    page.wait(lambda: page.shown("person1_region"))
    assert [page.value(f"person{n}_region") for n in (1, 2, 3, 4)] == ["left", "right", "box", "box"]
    assert [page.shown(f"person{n}_region_box") for n in (1, 2, 3, 4)] == [False, False, True, True]
    page.shot("5_several_people", "people")


def test_the_dropdowns_name_each_models_family_and_mark_what_does_not_fit(page):
    page.open_fold("advanced")
    page.wait(lambda: page.shown("adapter_model"))
    choices = page.options("adapter_model")
    assert "instantid/ip-adapter_sd15.safetensors — SD1.5, does not fit the loaded checkpoint" in " ".join(choices), \
        choices
    assert any(c.startswith("instantid/ip-adapter.bin") and "does not fit" not in c for c in choices), choices


def test_an_unpainted_mask_is_refused_in_the_panels_words(page, photos):
    page.upload("face_image", photos["face"])
    page.open_fold("advanced")
    page.choose("face_region", "mask")
    page.wait(lambda: page.shown("face_region_mask"))
    page.generate()
    page.wait(lambda: "Region mask" in page.el("html_log_txt2img").text)
    assert '"Face region" is \'mask\' but "Region mask" is missing' in page.el("html_log_txt2img").text
    page.shot("6_unpainted_mask_refused", "html_log_txt2img")


def test_a_painted_mask_generates_and_the_score_shows_under_the_panel(page, photos):
    from selenium.webdriver.common.action_chains import ActionChains

    page.upload("face_image", photos["face"])
    page.open_fold("advanced")
    page.choose("face_region", "mask")
    canvas = [c for c in page.el("face_region_mask").find_elements(page.by.TAG_NAME, "canvas") if c.is_displayed()][-1]
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(page.driver).move_to_element_with_offset(canvas, -40, -30).click_and_hold() \
        .move_by_offset(40, 10).move_by_offset(30, 30).release().perform()
    page.shot("7_mask_painted", "face_region_mask")
    page.generate()
    page.wait(lambda: "InstantID" in page.el("html_info_txt2img").text, timeout=600)
    info = page.el("html_info_txt2img").text
    assert "Size: 128x128" in info and "Face region: mask" in info and "InstantID similarity: " in info, info
    page.wait(lambda: page.shown("scores"))
    assert "Identity score" in page.el("scores").text
    page.shot("8_score_under_the_panel")


def test_a_photo_without_a_face_is_refused_in_the_panels_words(page, photos):
    page.upload("face_image", photos["no face"])
    page.wait(lambda: page.images("thumbnails") == 1)
    page.generate()
    page.wait(lambda: "No face found" in page.el("html_log_txt2img").text)
    assert "InstantID: No face found in the face image" in page.el("html_log_txt2img").text
    page.shot("9_no_face_refused", "html_log_txt2img")


def test_an_xyz_plot_over_a_weight_records_each_cells_own_score(server, photos):
    """Over the API of the WebUI with its UI: the X/Y/Z plot's axes (ours among them) exist once its UI is built."""
    import base64
    import json
    import re

    from tests.real_webui import ON, job, ok

    config = server.request("GET", "/config").json()
    x_type = next(c for c in config["components"]
                  if c.get("props", {}).get("elem_id") == "script_txt2img_xyz_plot_x_type")
    axes = [choice[0] if isinstance(choice, list) else choice for choice in x_type["props"]["choices"]]
    face = base64.b64encode(Path(photos["face"]).read_bytes()).decode()
    # x axis, values, (none on y and z), legend, the cells' own images too, then the plot's other defaults
    plot = [axes.index("[InstantID] Adapter weight"), "0.2, 1.5", [], 0, "", [], 0, "", [], True, True, False,
            False, False, False, False, 0, False]
    response = ok(server, server.request("POST", "/sdapi/v1/txt2img", {
        **job({**ON, "face_image": face}), "script_name": "x/y/z plot", "script_args": plot}))
    grid, *cells = json.loads(response.json()["info"])["infotexts"]
    assert "InstantID similarity" not in grid and len(cells) == 2
    for weight, text, image in zip(("0.2", "1.5"), cells, response.json()["images"][1:]):
        assert f"Adapter weight: {weight}" in text, text
        route = ok(server, server.request("POST", "/instantid/similarity", {"reference": face, "image": image}))
        assert re.findall(r"InstantID similarity: ([^,]+)", text) == [route.json()["message"]], text


def test_no_errors_were_logged_by_our_script(server):
    assert not server.script_errors(), server.script_errors()
