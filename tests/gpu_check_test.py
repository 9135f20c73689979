"""tools/gpu_check.py on a CPU: test-sized workloads and a peer result read from a file."""
import json
import os
import time

import pytest

from tools import gpu_check


def test_gpu_check_writes_ours_beside_the_peers_with_their_ratios(tmp_path, capsys):
  # The peers' script's keys and fields; SimCLR's compiled run failed (it stores the error).
  peers = {"open_clip_vitb16_sigmoid_b256_eager": {"img_per_s": 50.0},
           "open_clip_vitb16_sigmoid_b256_compile": {"img_per_s": 80.0},
           "torch_simclr_r50_b256x2_eager": {"img_per_s": 40.0},
           "torch_simclr_r50_b256x2_compile": "RuntimeError('out of memory')"}
  (tmp_path / "peers.json").write_text(json.dumps(peers))
  result = gpu_check.main(["--tiny", "--steps=2", "--warmup=1", f"--out={tmp_path}",
                           f"--peer_json={tmp_path / 'peers.json'}"])
  saved = json.loads((tmp_path / "gpu_check.json").read_text())
  assert saved["ratios"] == json.loads(json.dumps(result["ratios"]))
  siglip, simclr = result["ratios"]
  ours = result["ours"]
  assert ours["siglip_b16"]["method"] == "siglip" and ours["simclr_r50"]["method"] == "simclr"
  assert siglip["ratio_compile"] == pytest.approx(ours["siglip_b16"]["images_per_s"] / 80.0)
  assert siglip["ratio_eager"] == pytest.approx(ours["siglip_b16"]["images_per_s"] / 50.0)
  assert siglip["meets_target"] == (siglip["ratio_compile"] >= 1.3)
  assert simclr["ratio_compile"] is None and not simclr["meets_target"]
  assert simclr["ratio_eager"] == pytest.approx(ours["simclr_r50"]["images_per_s"] / 40.0)
  table = capsys.readouterr().out
  assert "| simclr_r50 |" in table and "| n/a | 40 |" in table and "NOT met" in table


def test_gpu_check_names_a_missing_peer_script(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_check.main([f"--peer_bench={tmp_path / 'none.py'}", f"--out={tmp_path}"])
  assert "none.py does not exist; copy ../shared/peers/peer_bench.py" in capsys.readouterr().err


FAKE_PEERS = """
import json, os, subprocess, sys, time
out = os.environ["OUT"]
json.dump({"torch_simclr_r50_b256x2_eager": {"img_per_s": 40.0}},
          open(os.path.join(out, "peer_bench.json"), "w"))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(os.path.join(out, "child.pid"), "w").write(str(child.pid))
{end}
"""


@pytest.mark.parametrize("end, note", [("time.sleep(60)", "stopped after 3 s"),
                                       ("sys.exit(3)", "exited with status 3")])
def test_peers_cut_short_keep_what_they_measured(tmp_path, end, note):
  """A peer script past its time (with a child, as torch.compile has) or failing: what it
  wrote is kept, an earlier run's file is not, and the note says why results are missing."""
  script = tmp_path / "peers.py"
  script.write_text(FAKE_PEERS.replace("{end}", end))
  out = tmp_path / "out"
  out.mkdir()
  (out / "peer_bench.json").write_text(json.dumps({"open_clip_vitb16_sigmoid_b256_compile": 1}))
  start = time.time()
  peers = gpu_check.run_peers(str(script), str(out), timeout_s=3)
  assert time.time() - start < 30
  assert set(peers) == {"torch_simclr_r50_b256x2_eager", "peers_note"}
  assert note in peers["peers_note"]
  child = int((out / "child.pid").read_text())  # Killed with the script's process group.
  time.sleep(0.5)
  state = open(f"/proc/{child}/stat").read().split()[2] if os.path.exists(
      f"/proc/{child}") else "gone"
  assert state in ("Z", "gone")
