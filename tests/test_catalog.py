"""The department catalog and the labeling config generated from it."""
from __future__ import annotations

import pytest

from annotation_config.__main__ import main as regenerate
from annotation_config.catalog import DEFAULT_LABELING_CONFIG, CatalogError, load_catalog
from annotation_config.labeling_config import render_labeling_config
from core.labeling import parse_label_config


def test_shipped_catalog_and_config_agree():
    catalog = load_catalog()
    assert len(catalog.departments) == 70
    assert all(d.duties for d in catalog.departments)
    assert DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8") == render_labeling_config(catalog)
    assert parse_label_config(render_labeling_config(catalog)).departments == catalog.names


def test_bring_your_own_csv_catalog(tmp_path, capsys):
    path = tmp_path / "units.csv"
    path.write_text("name,duties,aliases\n区城管局,违建 占道,城管|城管队\n区教育局,入学 学区,\n", encoding="utf-8")
    out = tmp_path / "config.xml"
    assert regenerate(["--catalog", str(path), "--out", str(out), "--text-field", "content"]) == 0
    space = parse_label_config(out.read_text(encoding="utf-8"))
    assert space.departments == ("区城管局", "区教育局") and space.data_key == "content"
    assert load_catalog(path).departments[0].aliases == ("城管", "城管队")


@pytest.mark.parametrize("content, phrase", [
    ("{", "not valid JSON"),
    ('{"departments": []}', "no departments"),
    ('{"departments": [{"name": ""}]}', "non-empty string"),
    ('{"departments": [{"name": "a<b"}]}', "not allowed in a label"),
    ('{"departments": [{"name": "甲"}, {"name": "乙", "aliases": ["甲"]}]}', "used twice"),
    ('{"departments": [{"name": "甲", "aliases": "x"}], "x": 1}', None),
    ('{"departments": [{"name": "甲", "duties": 3}]}', "'duties' must be a string"),
])
def test_bad_catalogs_are_explained(tmp_path, content, phrase):
    path = tmp_path / "c.json"
    path.write_text(content, encoding="utf-8")
    if phrase is None:
        assert load_catalog(path).names == ("甲",)
        return
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert phrase in str(err.value)


def test_regenerate_reports_a_bad_catalog_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe")
    assert regenerate(["--catalog", str(path), "--out", str(tmp_path / "x.xml")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
