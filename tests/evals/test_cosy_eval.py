"""CoSy evaluation of a real toy-world run, control-set loading and caching, `line eval cosy`."""

from __future__ import annotations

import asyncio
import csv
import shutil

import pytest
import typer
from typer.testing import CliRunner

from agent.run_folder import RunFolder
from cli.evals import eval_app
from evals.cosy import cosy_seeds
from evals.cosy_eval import (
    cosy_neurons,
    evaluate_cosy,
    read_label_csv,
    search_seeds,
)
from tools.client import LineClient
from tools.controlset import (
    ControlSet,
    ControlSetError,
    cached_control_activations,
    control_activations,
    measure_control,
)
from toyworld.procedural import render_prompt

runner = CliRunner()


def _run(coroutine_function, url):
    async def go():
        async with LineClient(url) as client:
            return await coroutine_function(client)

    return asyncio.run(go())


@pytest.fixture
def cosy_app() -> typer.Typer:
    """``line eval``, whose ``cosy`` command the tests invoke."""
    return eval_app


@pytest.fixture
def messy_folders(tmp_path):
    """A flat folder and a class-folder tree, each with unreadable image files and other files."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for seed in range(3):
        render_prompt("a red circle", seed, 64, 64).image.save(flat / f"img{seed}.png")
    (flat / "broken.jpg").write_text("this is not a jpeg")
    (flat / "empty.png").write_bytes(b"")
    (flat / "notes.txt").write_text("ignored: not an image name")
    classes = tmp_path / "classes"
    for name, prompt in {"n01_red_things": "a red circle", "blue_things": "a blue square"}.items():
        (classes / name).mkdir(parents=True)
        for seed in range(2):
            render_prompt(prompt, seed, 64, 64).image.save(classes / name / f"{seed}.JPEG")
    good = (classes / "blue_things" / "0.JPEG").read_bytes()
    (classes / "blue_things" / "truncated.png").write_bytes(good[: len(good) // 3])
    return flat, classes


def test_control_folders_skip_and_report_bad_files(cosy_toy_server, messy_folders, cosy_units):
    flat, classes = messy_folders
    red_unit, blue_unit = cosy_units["red"], cosy_units["blue"]
    flat_set, class_set = ControlSet.from_folder(flat), ControlSet.from_folder(classes)
    assert len(flat_set.images) == 5 and flat_set.classes == []
    assert class_set.classes == ["blue things", "n01 red things"]

    async def measure(client):
        return (
            await measure_control(client, flat_set, "planted:shapes", "planted", batch=2),
            await measure_control(
                client, class_set, "planted:shapes", "planted", units=[red_unit, blue_unit]
            ),
            await control_activations(client, class_set, "planted:shapes", "planted", [red_unit]),
        )

    flat_read, class_read, matrix = _run(measure, cosy_toy_server)
    assert flat_read.values.shape == (3, 28)
    assert sorted(s.path.rsplit("/", 1)[1] for s in flat_read.skipped) == [
        "broken.jpg",
        "empty.png",
    ]
    assert all("not a readable image" in s.reason for s in flat_read.skipped)
    assert [flat_set.images[i].path.name for i in flat_read.kept] == [
        f"img{s}.png" for s in range(3)
    ]
    assert class_read.values.shape == (4, 2) and class_read.units == [red_unit, blue_unit]
    assert [s.path.rsplit("/", 1)[1] for s in class_read.skipped] == ["truncated.png"]
    assert class_read.labels == ["blue things"] * 2 + ["n01 red things"] * 2
    red, blue = class_read.unit(red_unit), class_read.unit(blue_unit)
    assert red[2:].min() > red[:2].max() and blue[:2].min() > blue[2:].max()
    assert matrix.shape == (4, 1)
    with pytest.raises(ControlSetError, match="unit 27 was not measured"):
        class_read.unit(27)


def test_a_folder_of_only_bad_files_says_so(cosy_toy_server, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("nope")
    bad = ControlSet.from_folder(tmp_path / "bad")

    async def measure(client):
        return await measure_control(client, bad, "planted:shapes", "planted")

    with pytest.raises(ControlSetError, match="no image of control set"):
        _run(measure, cosy_toy_server)


def test_toy_control_specs():
    assert len(ControlSet.resolve("toy").images) == 200
    assert len(ControlSet.resolve("toy:40").images) == 40
    assert ControlSet.toy(40).fingerprint("procedural:shapes") != ControlSet.toy(40).fingerprint(
        "tiny-sd"
    )
    with pytest.raises(ControlSetError, match="toy:N"):
        ControlSet.resolve("toy:many")


def test_control_matrix_is_cached_on_disk(cosy_toy_server, messy_folders, tmp_path):
    flat, _ = messy_folders
    control = ControlSet.from_folder(flat)
    cache = tmp_path / "cache"

    async def read(client):
        return await cached_control_activations(
            client, control, "planted:shapes", "planted", cache, server="store:test"
        )

    first = _run(read, cosy_toy_server)
    assert not first.cached and len(list(cache.glob("control-*.npz"))) == 1

    async def read_without_sending(client):
        async def refuse(*_args, **_kwargs):
            raise AssertionError("a cached control set must not be sent again")

        client.upload_images = client.activations = client.generate_images = refuse
        return await read(client)

    again = _run(read_without_sending, cosy_toy_server)
    assert again.cached and (again.values == first.values).all()
    assert (
        again.kept == first.kept and again.skipped == first.skipped and again.units == first.units
    )
    # a changed file changes the fingerprint: measured again
    render_prompt("a blue star", 9, 64, 64).image.save(flat / "img0.png")
    assert not _run(read, cosy_toy_server).cached
    assert len(list(cache.glob("control-*.npz"))) == 2


def test_evaluate_cosy_scores_the_run_labels(cosy_toy_server, cosy_run, cosy_units):
    notes: list[str] = []

    async def evaluate(client):
        return await evaluate_cosy(
            cosy_run, client, ControlSet.toy(40), n_images=12, notes=notes.append
        )

    rows = _run(evaluate, cosy_toy_server)
    assert notes == []
    assert [row["unit"] for row in rows] == sorted(cosy_units.values())
    by_unit = {row["unit"]: row for row in rows}
    labels = {n.unit: n.label for n in cosy_neurons(cosy_run)[0]}
    for unit, row in by_unit.items():
        assert row["concept"] == labels[unit] and row["neuron"] == f"planted#{unit}"
        assert row["n_concept"] == 12 and row["n_control"] == 40
        assert row["prompt"] == f"realistic photo of a close up of {labels[unit]}"
    red = by_unit[cosy_units["red"]]
    assert red["concept"] == "red" and red["auc"] > 0.9 and red["mad"] > 1 and red["p"] < 1e-4
    constant = by_unit[cosy_units["constant"]]  # constant 1.0: no spread in the control set
    assert (constant["auc"], constant["mad"], constant["p"]) == (0.5, 0.0, 1.0)


def test_cosy_seeds_are_disjoint_from_every_search_seed(cosy_run):
    used = search_seeds(cosy_run)
    assert len(used) >= 3 * 5  # at least the first concept of each neuron
    settings = cosy_run.read_settings()
    for neuron in cosy_neurons(cosy_run)[0]:
        seeds = cosy_seeds(settings.seed, neuron.label, 50, used)
        assert not set(seeds) & used
    # even a collision is passed over: pretend the search used the first CoSy seed
    first = cosy_seeds(settings.seed, "red", 1)[0]
    assert first not in cosy_seeds(settings.seed, "red", 50, used | {first})


def test_other_labels_and_failed_neurons(cosy_toy_server, cosy_run, cosy_units, tmp_path):
    red, blue, constant = cosy_units["red"], cosy_units["blue"], cosy_units["constant"]
    copy = RunFolder(tmp_path / "run")
    shutil.copytree(cosy_run.path, copy.path)
    record = copy.read_record("planted", blue)
    assert record is not None
    copy.write_record(record.model_copy(update={"status": "failed", "reason": "Timeout"}))
    neurons, notes = cosy_neurons(copy)
    assert [n.unit for n in neurons] == sorted([red, constant])
    assert notes == [f"planted#{blue}: failed (Timeout), skipped"]

    async def evaluate(client):
        return await evaluate_cosy(
            copy,
            client,
            ControlSet.toy(40),
            n_images=8,
            labels={red: "blue", blue: "blue", ("features", 3): "blue"},
        )

    rows = _run(evaluate, cosy_toy_server)
    assert rows[0]["neuron"] == "features#3" and rows[0]["n_control"] == 40  # another layer
    by_unit = {row["unit"]: row for row in rows[1:]}
    assert set(by_unit) == {red, blue}  # labels from elsewhere: the failed unit is scored too
    assert by_unit[blue]["auc"] > 0.9 > by_unit[red]["auc"]

    unknown: list[str] = []

    async def bad_units(client):
        return await evaluate_cosy(
            copy, client, ControlSet.toy(40), 4, notes=unknown.append,
            labels={99: "blue", 98: "red", red: "red", ("conv9", 1): "red"},
        )  # fmt: skip

    rows = _run(bad_units, cosy_toy_server)
    assert [row["unit"] for row in rows] == [red]  # the rest is listed, not scored
    assert unknown == [
        "planted:shapes has no layer 'conv9' (its layers: planted, features, inhibited); "
        "labels not scored: unit 1",
        "layer 'planted' of planted:shapes has units 0 to 27; labels not scored: units 98, 99",
    ]


def test_read_label_csv(tmp_path):
    path = tmp_path / "clip-dissect.csv"
    path.write_text("layer,unit,description\nplanted,0,red\nfeatures,3, blue \n,9,\n")
    labels, notes = read_label_csv(path)
    assert labels == {("planted", 0): "red", ("features", 3): "blue"}
    assert notes == ["clip-dissect.csv line 4: unit 9 has no label, skipped"]
    path.write_text('layer,unit,description,similarity\nplanted,2,"prayer rug, mat",0.16\n')
    assert read_label_csv(path)[0] == {("planted", 2): "prayer rug, mat"}  # CLIP-Dissect
    path.write_text("neuron,concept,concept_id,metric\n0,lhasa,n02098413,0.93\n")
    assert read_label_csv(path)[0] == {0: "lhasa"}  # CoSy / INVERT
    path.write_text("neuron,layer,unit,concept,AUC\nplanted#4,planted,4,red,0.9\n")
    assert read_label_csv(path)[0] == {("planted", 4): "red"}  # our cosy.csv
    path.write_text("neuron,concept\nfeatures#3,blue\n")
    assert read_label_csv(path)[0] == {("features", 3): "blue"}
    path.write_text("id,text\n0,red\n")
    with pytest.raises(ValueError, match="has the columns id, text; a labels file needs one of"):
        read_label_csv(path)
    path.write_text("unit,label\nseven,red\n")
    with pytest.raises(ValueError, match="line 2: unit"):
        read_label_csv(path)
    path.write_text("unit,label\n1,red\n1,blue\n")
    with pytest.raises(ValueError, match="two labels"):
        read_label_csv(path)


def test_cosy_command_with_a_local_server(cosy_app, cosy_run, cosy_units, line_cache, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(cosy_run.path, run_dir)
    args = ["cosy", str(run_dir), "--control", "toy:30", "--n-images", "6", "--device", "cpu"]
    result = runner.invoke(cosy_app, args)
    assert result.exit_code == 0, result.output
    assert "planted: AUC " in result.output and "(3 neurons)" in result.output
    with (run_dir / "cosy.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert list(table[0]) == [
        "neuron", "layer", "unit", "concept", "AUC", "U", "p", "MAD", "n_concept", "n_control",
    ]  # fmt: skip
    assert [int(row["unit"]) for row in table] == sorted(cosy_units.values())
    assert {row["n_concept"] for row in table} == {"6"} and table[0]["n_control"] == "30"
    assert len(list((line_cache / "store" / "control").glob("control-*.npz"))) == 1


def test_cosy_command_scores_another_methods_labels(
    cosy_app, cosy_toy_server, cosy_run, cosy_units, tmp_path
):
    red, blue = cosy_units["red"], cosy_units["blue"]
    run_dir = tmp_path / "run"
    shutil.copytree(cosy_run.path, run_dir)
    labels = tmp_path / "milan.csv"
    labels.write_text(f"unit,label,layer\n{red},red things,planted\n{blue},red,planted\n")
    args = ["cosy", str(run_dir), "--labels", str(labels), "--server", cosy_toy_server,
            "--control", "toy:30", "--n-images", "6", "--cache-dir", str(tmp_path / "cache"),
            "--template", "a photo of {label}"]  # fmt: skip
    result = runner.invoke(cosy_app, args)
    assert result.exit_code == 0, result.output
    with (run_dir / "cosy-milan.csv").open() as stream:
        table = {row["unit"]: row for row in csv.DictReader(stream)}
    assert table[str(red)]["concept"] == "red things" and float(table[str(red)]["AUC"]) > 0.9
    assert float(table[str(blue)]["AUC"]) < 0.9
    assert not (run_dir / "cosy.csv").exists()


def test_cosy_command_errors_say_what_to_do(cosy_app, cosy_run, tmp_path):
    result = runner.invoke(cosy_app, ["cosy", str(tmp_path)])
    assert result.exit_code == 2 and "not a LINE run folder" in result.output
    result = runner.invoke(cosy_app, ["cosy", str(cosy_run.path), "--control", str(tmp_path / "x")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = runner.invoke(cosy_app, ["cosy", str(cosy_run.path), "--template", "a {concept}"])
    assert result.exit_code == 2 and "{label}" in result.output
