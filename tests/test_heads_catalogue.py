"""The heads catalogue: shipped heads, the user's heads folder, a project's wsi-sam/heads/;
foreign and damaged files reported with the reason and skipped; --heads NAME; wsi-sam heads list;
the held-out split and model card of wsi-sam train --holdout."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from engine.heads_catalogue import (
    build_catalogue,
    project_heads_dir,
    resolve_heads,
    user_heads_dir,
    write_card,
)
from engine.train.holdout import split_holdout
from engine.wsi_sam import HeadsError, WsiSam, default_heads_path

VALIDATION = {
    "split": "2 held-out images",
    "n_objects": 7,
    "dice": {"WSI-SAM": {"box": 84.5, "3": 70.1}, "SAM": {"box": 83.0, "3": 55.2}},
}


@pytest.fixture
def heads_folders(tmp_path: Path, fresh_wsi_sam: WsiSam, monkeypatch: pytest.MonkeyPatch):
    """A user heads folder with a valid, a foreign and a damaged file, and a project folder."""
    user = tmp_path / "user-heads"
    monkeypatch.setenv("WSI_SAM_HEADS_DIR", str(user))
    model = copy.deepcopy(fresh_wsi_sam)
    model.save_heads(user / "mine.pt", trained_on="my glands", validation=VALIDATION)
    torch.save({"model": {"weight": torch.zeros(3)}}, user / "foreign.pt")
    (user / "damaged.pt").write_bytes((user / "mine.pt").read_bytes()[:5000])
    (user / "mine.state.pt").write_bytes(b"a training state, not heads")  # not listed at all
    project = tmp_path / "project"
    project.mkdir()
    (project / "project.qpproj").write_text("{}")
    model.save_heads(project_heads_dir(project) / "nuclei.pt", trained_on="project nuclei")
    model.save_heads(project_heads_dir(project) / "mine.pt", trained_on="same stem")
    return user, project


def test_valid_heads_listed_foreign_and_damaged_skipped_with_reason(heads_folders) -> None:
    user, _project = heads_folders
    assert user_heads_dir() == user
    catalogue = build_catalogue()
    names = catalogue.names()
    assert names[0] == "wsi_sam_default"  # the shipped heads first
    assert "mine" in names and "foreign" not in names and "damaged" not in names
    assert not any("state" in n for n in names)
    mine = catalogue.find("mine")
    assert mine is not None and mine.place == "user" and len(mine.sha256) == 64
    assert mine.trained_on.startswith("my glands")
    assert mine.figures["dice"]["WSI-SAM"]["box"] == 84.5
    assert "WSI-SAM: box 84.5, 3 pts 70.1" in mine.describe()
    reasons = {s.path.name: s.reason for s in catalogue.skipped}
    assert set(reasons) == {"foreign.pt", "damaged.pt"}
    assert "not a WSI-SAM heads checkpoint" in reasons["foreign.pt"]
    assert "not a readable heads checkpoint" in reasons["damaged.pt"]
    # the shipped heads carry their model card's test figures (card tied to the file's hash)
    shipped = catalogue.find("wsi_sam_default")
    assert shipped is not None and shipped.path == default_heads_path()
    assert shipped.figures["dice"]["WSI-SAM"]["box"] == pytest.approx(85.34)


def test_figures_from_a_card_only_when_it_matches_the_file(
    heads_folders, fresh_wsi_sam: WsiSam
) -> None:
    user, _ = heads_folders
    shipped_card = default_heads_path().with_name("wsi_sam_default.card.json").read_text()
    (user / "mine.card.json").write_text(shipped_card)  # the shipped heads' hash, not mine
    entry = build_catalogue().find("mine")
    assert entry is not None and entry.figures == VALIDATION  # its own metadata, not the card
    plain = user / "plain.pt"
    copy.deepcopy(fresh_wsi_sam).save_heads(plain, trained_on="no figures")
    assert build_catalogue().find("plain").figures == {}  # type: ignore[union-attr]
    write_card(plain, VALIDATION)
    assert build_catalogue().find("plain").figures == VALIDATION  # type: ignore[union-attr]
    copy.deepcopy(fresh_wsi_sam).save_heads(plain, trained_on="changed since")
    assert build_catalogue().find("plain").figures == {}  # type: ignore[union-attr]


def test_project_heads_and_names_in_two_places(heads_folders) -> None:
    _user, project = heads_folders
    catalogue = build_catalogue(project=project / "project.qpproj")
    nuclei = catalogue.find("nuclei")
    assert nuclei is not None and nuclei.place == "project"
    # "mine" is in the user's folder and in the project: qualified by the place
    assert catalogue.find("user:mine") is not None
    assert catalogue.find("project:mine") is not None
    assert catalogue.find("user:mine") != catalogue.find("project:mine")
    assert catalogue.find("mine") is None  # ambiguous


def test_heads_argument_takes_a_name_or_a_path(heads_folders, fresh_wsi_sam: WsiSam) -> None:
    user, project = heads_folders
    assert resolve_heads("mine") == user / "mine.pt"
    assert resolve_heads(str(user / "mine.pt")) == user / "mine.pt"
    assert resolve_heads(None) is None and resolve_heads("NONE") == "none"
    assert resolve_heads("nuclei", project=project) == project_heads_dir(project) / "nuclei.pt"
    with pytest.raises(HeadsError, match=r"no heads called 'nuclei'.*wsi_sam_default"):
        resolve_heads("nuclei")  # only in the project, which was not given
    with pytest.raises(HeadsError, match="no heads called 'foreign'"):
        resolve_heads("foreign")  # skipped by the catalogue: not a name
    with pytest.raises(HeadsError, match="not a WSI-SAM heads"):
        copy.deepcopy(fresh_wsi_sam).load_heads(resolve_heads(str(user / "foreign.pt")) or "")


def test_heads_list_command(heads_folders, capsys: pytest.CaptureFixture[str]) -> None:
    _user, project = heads_folders
    assert main(["heads", "list", "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "wsi_sam_default (shipped)" in out and "nuclei (project)" in out
    assert "skipped" in out and "foreign.pt" in out and "damaged.pt" in out
    assert main(["heads", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [h["name"] for h in listed["heads"]] == ["wsi_sam_default", "mine"]
    assert {s["path"].rsplit("/", 1)[-1] for s in listed["skipped"]} == {
        "foreign.pt",
        "damaged.pt",
    }


def test_holdout_splits_by_image_or_by_object(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any

    # only an object's source matters to the split
    samples: list[Any] = [
        SimpleNamespace(source=tmp_path / f"img{image:02d}.png", index=i)
        for image in range(10)
        for i in range(3)
    ]
    split = split_holdout(samples, 0.2)
    assert split.by == "images" and len(split.held_sources) == 2 and len(split.held) == 6
    assert {s.source for s in split.held}.isdisjoint({s.source for s in split.train})
    assert len(split.train) + len(split.held) == 30
    by_object = split_holdout(samples[:3], 0.3)
    assert by_object.by == "objects" and len(by_object.held) == 1 and len(by_object.train) == 2
    assert "optimistic" in by_object.describe()
    assert split_holdout(samples, 0.0).by == "none"
    assert "none asked for" in split_holdout(samples, 0.0).describe()
    assert split_holdout(samples[:1], 0.5).held == []
    assert "too few" in split_holdout(samples[:1], 0.5).describe()
