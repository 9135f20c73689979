"""tools/pipeline_benchmark.py on a few generated JPEGs: every pipeline runs, on the same images."""
import json

from tools import pipeline_benchmark


def test_the_benchmark_times_ours_and_torchvision_on_the_same_files(tmp_path):
  out = tmp_path / "pipeline.json"
  result = pipeline_benchmark.main([
      "--views=1,2", "--workers=0", "--num_images=16", "--size=48", "--batch_size=8",
      "--steps=12", "--warmup=2", "--repeats=1", f"--out={out}"])
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
  assert result["data"]["num_files"] == 16 and result["data"]["generated"]
  rows = {(r["pipeline"], r["views"]): r for r in result["rows"]}
  assert set(rows) == {(p, v) for p in ("torchvision", "ours-folder", "ours-prepared")
                       for v in (1, 2)}
  for (name, views), row in rows.items():
    assert row["images_per_s"] > 0 and row["busy_cores"] > 0, row
    assert row["target"] == pipeline_benchmark.TARGETS[views][0]
    assert row["cores_for_target_per_busy_core"] >= 1
    torch_row = rows[("torchvision", views)]
    assert abs(row["ratio_to_torchvision_per_core"] * torch_row["images_per_s"] -
               row["images_per_s"]) < 1e-6 * row["images_per_s"]
    # Every pixel of every batch was read: crops of photos, neither black nor blank.
    assert 20 < row["runs"][0]["mean_pixel"] < 235, (name, views, row["runs"])
