"""tools/gpu_check.py on a CPU: test-sized workloads and a peer result read from a file."""
import json
import os
import signal
import subprocess
import sys
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
  assert simclr["ratio_compile"] is None and simclr["meets_target"] is None
  assert simclr["ratio_eager"] == pytest.approx(ours["simclr_r50"]["images_per_s"] / 40.0)
  table = capsys.readouterr().out
  assert "| simclr_r50 |" in table and "| n/a | 40 |" in table and "no peer result" in table


def test_gpu_check_names_a_missing_peer_script(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_check.main([f"--peer_bench={tmp_path / 'none.py'}", f"--out={tmp_path}"])
  assert "none.py does not exist; copy ../shared/peers/peer_bench.py" in capsys.readouterr().err


# A peers' script with peer_bench.py's functions; its compiled SimCLR run ends as `end` says,
# after starting a child process (as torch.compile starts workers).
FAKE_PEERS = """
import os, subprocess, sys, time
def versions():
  return {"torch": "fake"}
def clip_bench(loss_kind, batch, compile_):
  assert loss_kind == "sigmoid" and batch == 256
  return {"img_per_s": 80.0 if compile_ else 50.0}
def simclr_bench(batch, compile_):
  if compile_:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.path.join(os.environ["OUT"], "child.pid"), "w").write(str(child.pid))
    {end}
  return {"img_per_s": 40.0}
"""


def _gone(pid: int) -> bool:
  """Whether process `pid` has exited (a zombie whose parent has not reaped it counts)."""
  time.sleep(0.5)
  stat = f"/proc/{pid}/stat"
  return not os.path.exists(stat) or open(stat).read().split()[2] == "Z"


@pytest.mark.parametrize("end, measured, note", [
    ("time.sleep(60)", ["open_clip_vitb16_sigmoid_b256_compile"], "stopped after 5 s"),
    ("os._exit(3)", ["open_clip_vitb16_sigmoid_b256_compile"], "exited with status 3"),
    ("raise RuntimeError('out of memory')", [key for key, _, _ in gpu_check.PEER_RUNS], None),
])
def test_peers_run_compiled_first_and_a_cut_short_run_keeps_what_it_measured(
    tmp_path, end, measured, note):
  """Compiled runs first; past the timeout or after a crash the process group is gone, what
  was measured is kept, and an earlier run's file is not; a failed run is recorded."""
  script = tmp_path / "peers.py"
  script.write_text(FAKE_PEERS.replace("{end}", end))
  out = tmp_path / "out"
  out.mkdir()
  (out / "peer_bench.json").write_text(json.dumps({"torch_simclr_r50_b256x2_eager": 1}))
  start = time.time()
  peers = gpu_check.run_peers(str(script), str(out), timeout_s=5)
  assert time.time() - start < 40
  assert [k for k in peers if k.endswith(("_compile", "_eager"))] == measured
  assert peers["versions"] == {"torch": "fake"}
  if note:
    assert note in peers["peers_note"] and "torch_simclr_r50_b256x2_compile" in peers["peers_note"]
  else:
    assert "peers_note" not in peers
    assert peers["torch_simclr_r50_b256x2_compile"] == "RuntimeError('out of memory')"
    assert peers["open_clip_vitb16_sigmoid_b256_eager"] == {"img_per_s": 50.0}
  assert _gone(int((out / "child.pid").read_text()))  # Killed with the script's group.


def test_terminating_the_check_takes_the_peers_down_with_it(tmp_path):
  """SIGTERM (a job's time limit) reaches gpu_check, not the peers' own process group: their
  processes must not outlive it, holding the GPU."""
  script = tmp_path / "peers.py"
  script.write_text(FAKE_PEERS.replace("{end}", "time.sleep(60)"))
  driver = subprocess.Popen(
      [sys.executable, "-c", "import sys; from tools import gpu_check; "
       "gpu_check.run_peers(sys.argv[1], sys.argv[2], 60)", str(script), str(tmp_path)],
      cwd=gpu_check.ROOT)
  deadline = time.time() + 30
  while not (tmp_path / "child.pid").exists() and time.time() < deadline:
    time.sleep(0.2)
  driver.send_signal(signal.SIGTERM)
  assert driver.wait(timeout=20) != 0
  assert _gone(int((tmp_path / "child.pid").read_text()))
