from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from mmrag.jobs.pipeline import PipelineError, load_pipeline, load_pipelines, next_run

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str, name: str = "photos.yaml") -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (tmp_path / "corpus").mkdir(exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def _error(path: Path, **kw) -> str:
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, **kw)
    return str(info.value)


def test_full_pipeline_loads_with_paths_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "labels.txt").write_text("# comment\ncat\n\n dog \n")
    (tmp_path / "corpus" ).mkdir()
    (tmp_path / "corpus" / "captions.csv").write_text("path,caption\n")
    p = _write(tmp_path, """
name: photos
source: {folder: ../corpus, manifest: ../corpus/captions.csv}
model: clip-vit-b32
collection: family-photos
batch: {images: 16, texts: 64, writes: 128}
tagging: {labels_file: ../labels.txt, threshold: 0.25, top: 2}
prune: true
schedule: "0 3 * * *"
keep_versions: 3
""")
    monkeypatch.chdir("/")  # resolution must not depend on the working directory
    d = load_pipeline(p)
    assert d.source.folder == (tmp_path / "corpus").resolve()
    assert d.source.manifest == (tmp_path / "corpus" / "captions.csv").resolve()
    assert d.collection_name == "family-photos"
    assert (d.batch.images, d.batch.texts, d.batch.writes) == (16, 64, 128)
    assert d.tag_labels == ["cat", "dog"]
    assert (d.tagging.threshold, d.tagging.top, d.prune, d.keep_versions) == (0.25, 2, True, 3)
    assert next_run(d.schedule, datetime(2025, 5, 1, 4, 0, tzinfo=timezone.utc)) == datetime(
        2025, 5, 2, 3, 0, tzinfo=timezone.utc)


def test_defaults(tmp_path):
    d = load_pipeline(_write(tmp_path, "name: photos\nsource: {folder: ../corpus}\nmodel: m\n"))
    assert (d.collection_name, d.prune, d.schedule, d.keep_versions, d.tagging, d.tag_labels) == (
        "photos", False, None, 2, None, None)
    assert (d.batch.images, d.batch.texts, d.batch.writes) == (None, None, None)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("name: photos\nsourec: {folder: ../corpus}\nmodel: m\n",
         ["source: required field is missing", "sourec: unknown field"]),
        ("name: photos\nsource: {folder: /x/does/not/exist}\nmodel: m\n",
         ["source.folder: path does not exist: /x/does/not/exist"]),
        ("name: photos\nsource: {}\nmodel: m\n", ["source: give at least one of 'folder' or 'manifest'"]),
        ("name: photos\nsource: {folder: ../corpus, glob: '*.jpg'}\nmodel: m\n", ["source.glob: unknown field"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\nschedule: '61 * * * *'\n",
         ["schedule: not a valid cron expression: '61 * * * *' (expected e.g. '0 3 * * *')"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\nkeep_versions: 0\n",
         ["keep_versions: Input should be greater than or equal to 1"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\nbatch: {images: 0}\n",
         ["batch.images: Input should be greater than or equal to 1"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\ntagging: {threshold: 0.2}\n",
         ["tagging: give exactly one of 'labels' or 'labels_file'"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\ncollection: photos__v3\n",
         ["collection: 'photos__v3' looks like a rebuild version; name the alias instead (without '__vN')"]),
        ("name: 'my photos'\nsource: {folder: ../corpus}\nmodel: m\n",
         ["name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'"]),
        ("name: photos\nsource: {folder: ../corpus}\nmodel: m\nprune: maybe\n",
         ["prune: Input should be a valid boolean, unable to interpret input"]),
        ("- just\n- a list\n", ["expected a mapping of fields at the top level"]),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, body, expected):
    p = _write(tmp_path, body)
    assert _error(p) == "\n".join(f"{p}: {e}" for e in expected)


def test_error_uses_the_path_as_given(tmp_path, monkeypatch):
    _write(tmp_path, "name: photos\nsourec: {folder: ../corpus}\nsource: {folder: ../corpus}\nmodel: m\n")
    monkeypatch.chdir(tmp_path)
    assert _error(Path("pipelines/photos.yaml")) == "pipelines/photos.yaml: sourec: unknown field"
    assert _error(Path("pipelines/missing.yaml")).startswith("pipelines/missing.yaml: cannot read file:")
    (tmp_path / "pipelines" / "bad.yaml").write_text("name: [unclosed\n")
    assert _error(Path("pipelines/bad.yaml")).startswith("pipelines/bad.yaml: invalid YAML:")


def test_env_expansion(tmp_path):
    p = _write(tmp_path, "name: photos\nsource: {folder: '${CORPUS}/x'}\nmodel: '${MODEL:-clip-vit-b16}'\n")
    (tmp_path / "c" / "x").mkdir(parents=True)
    d = load_pipeline(p, env={"CORPUS": str(tmp_path / "c")})
    assert d.source.folder == (tmp_path / "c" / "x").resolve() and d.model == "clip-vit-b16"
    assert _error(p, env={}) == f"{p}: source.folder: environment variable CORPUS is not set"


def test_load_pipelines_collects_errors_and_refuses_two_pipelines_on_one_collection(tmp_path):
    a = _write(tmp_path, "name: a\nsource: {folder: ../corpus}\nmodel: m\ncollection: shared\n", "a.yaml")
    b = _write(tmp_path, "name: b\nsource: {folder: ../corpus}\nmodel: m\ncollection: shared\n", "b.yml")
    with pytest.raises(PipelineError) as info:
        load_pipelines([a.parent])
    assert str(info.value) == f"{b}: collection: 'shared' is also served by {a}"
    b.write_text("name: b\nsource: {folder: ../nope}\nmodel: m\nextra: 1\n")
    with pytest.raises(PipelineError) as info:
        load_pipelines([a.parent])
    nope = (tmp_path / "nope").resolve()
    assert info.value.errors == [f"{b}: source.folder: path does not exist: {nope}", f"{b}: extra: unknown field"]
    b.write_text("name: b\nsource: {folder: ../corpus}\nmodel: m\n")
    assert [d.name for d in load_pipelines([a.parent])] == ["a", "b"]


@pytest.mark.parametrize(
    "name, model, collection, schedule",
    [("photos.yaml", "clip-vit-b32", "photos", "0 3 * * *"),
     ("examples/products.yaml", "chinese-clip-vit-b16", "products", "15 * * * *")],
)
def test_shipped_example_pipelines_are_valid(tmp_path, name, model, collection, schedule):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("path,caption\n")
    env = {"PHOTOS_DIR": str(data), "PRODUCTS_DIR": str(data)}
    d = load_pipeline(REPO / "pipelines" / name, env=env)
    assert d.source.folder == data.resolve()
    assert (d.model, d.collection_name, d.schedule) == (model, collection, schedule)
    # without the variable the documented default applies, which does not exist here
    assert "path does not exist: /data/" in _error(REPO / "pipelines" / name, env={})


def test_unexpanded_variables_are_reported_not_treated_as_paths(tmp_path):
    p = _write(tmp_path, "name: photos\nsource: {folder: '${CORPUS}/x'}\nmodel: m\n")
    assert _error(p) == (
        f"{p}: source.folder: ${{CORPUS}}/x: ${{...}} is not expanded here "
        "(load_pipeline(path, env=os.environ) expands it)"
    )
