"""Two processes on one machine (jax.distributed over 127.0.0.1, gloo) train like one."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from absl import app
import jax
import numpy as np
import pytest

from big_contrast import train
from conftest import subprocess_env
from conftest import tiny_config
from conftest import xla_flags

# Data parallel across the two processes, FSDP over the 4 devices of each: parameters,
# optimizer state and BatchNorm statistics are split, and the batch over all 8 devices.
# Evaluation: k-NN only (the linear probe's sharding is the k-NN's, its compile is not).
MESH = {"mesh": [("data", 2), ("fsdp", 4)], "sharding.rules": ("fsdp",), "sharding.min_size": 0,
        "eval.evaluators": ("knn",)}

_WORKER = f"MESH = {MESH!r}\nXLA_FLAGS = {xla_flags(4)!r}\n" + textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = XLA_FLAGS
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    # Starts the backend with 4 devices before conftest (imported next) asks for 8.
    assert len(jax.local_devices()) == 4 and len(jax.devices()) == 8
    from big_contrast import train
    from conftest import tiny_config
    results = train.train_and_evaluate(tiny_config(**MESH), workdir)
    params = multihost_utils.process_allgather(results["train_state"]["params"], tiled=True)
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    # The checkpoint evaluated afterwards by both processes, as `python -m
    # big_contrast.evaluate` does: what the training loop evaluated at that step.
    from big_contrast import run_config
    from big_contrast.evaluate import command
    again = command.evaluate_workdir(run_config.read_saved(workdir), workdir)
    if pid == 0:
      np.savez(os.path.join(workdir, "params.npz"), **flat)
      print("KNN", results["final"]["eval/knn_top1"], flush=True)
      print("AGAIN", again["step"], again["metrics"] == results["final"], flush=True)
""")


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row["loss"] for row in map(json.loads, f) if "loss" in row]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _free_port_from(low: int) -> int:
  for port in range(low + os.getpid() % 1000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
        return port
      except OSError:
        continue
  raise RuntimeError(f"no free port above {low}")


def test_two_processes_of_4_devices_match_one_process_of_8(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests")]))
  port = str(_free_port())
  workers = [subprocess.Popen([sys.executable, "-c", _WORKER, port, str(i), str(tmp_path / "mh")],
                              env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
  outs = [w.communicate(timeout=400) for w in workers]
  for w, (_, err) in zip(workers, outs):
    assert w.returncode == 0, err[-3000:]
  # Orbax wrote the checkpoints of the 2-process run (every 2 steps, and the last).
  assert sorted(os.listdir(tmp_path / "mh" / "checkpoints")) == ["2", "4"]

  single = train.train_and_evaluate(tiny_config(**MESH), str(tmp_path / "single"))
  conv = single["train_state"]["params"]["backbone"]["stem_conv"]["kernel"]
  assert conv.sharding.spec != jax.sharding.PartitionSpec()  # FSDP did split it
  # The same loss at every step (process 0 wrote the log) ...
  np.testing.assert_allclose(_losses(tmp_path / "mh"), _losses(tmp_path / "single"), rtol=1e-5)
  assert len(_losses(tmp_path / "single")) == 4
  want = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(single["train_state"]["params"])}
  got = np.load(tmp_path / "mh" / "params.npz")  # ... and the same parameters at the end.
  assert set(got.files) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # Evaluation ran across both processes; float reduction order differs between the two
  # layouts, which can flip a near-tied neighbour of this untrained model (1/360 each).
  assert "AGAIN 4 True" in outs[0][0], outs[0][0]
  knn = float(outs[0][0].split("KNN")[1].split()[0])
  np.testing.assert_allclose(knn, single["final"]["eval/knn_top1"], atol=0.02)


_TINY_FLAGS = ["--config.batch_size=16", "--config.total_steps=1000",
               "--config.data.image_size=8", "--config.log_every_steps=1",
               "--config.augment.crop_size=8", "--config.model.width=4", "--config.model.depth=10",
               "--config.model.head_hidden_dims=(16,)", "--config.model.head_dim=8",
               "--config.optimizer.warmup_epochs=0.0", "--config.eval.at_start=False",
               "--config.checkpoint.every_steps=1000",
               # As in the README's cluster commands: mesh and rules from the command line.
               "--config.mesh=(('data', 2), ('fsdp', 2))", "--config.sharding.rules=('fsdp',)",
               "--config.sharding.min_size=0"]


def test_cli_two_processes_stop_together_when_one_is_preempted(tmp_path):
  """The README's explicit-coordinator command; SIGTERM reaches only process 1 (as when one
  node of a job is preempted): both processes stop after the same step, save it, exit 0."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = subprocess_env(2, PYTHONPATH=root)
  port = str(_free_port())
  workdir = str(tmp_path / "cli")
  workers = [subprocess.Popen(
      [sys.executable, "-m", "big_contrast.main", "--config=configs/simclr_digits.py",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", *_TINY_FLAGS],
      env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  deadline = time.time() + 300
  while time.time() < deadline and all(w.poll() is None for w in workers):
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and len(_losses(workdir)) >= 2:
      workers[1].send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  outs = [w.communicate(timeout=400) for w in workers]
  for w, (_, err) in zip(workers, outs):
    assert w.returncode == 0, err[-3000:]
  stopped = int(outs[0][0].split("Stopped by a signal to another process at step ")[1].split()[0])
  assert 2 <= stopped < 1000
  assert "Stopped" not in outs[1][0]           # Only process 0 prints the summary.
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
  assert len(_losses(workdir)) == stopped


def test_cli_rejects_partial_distributed_flags(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-m", "big_contrast.main", "--config=configs/simclr_digits.py",
       f"--workdir={tmp_path}", "--coordinator_address=127.0.0.1:1234"],
      env=subprocess_env(1, PYTHONPATH=root), cwd=root,
      capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "go together" in out.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def _srun_env(i: int, port: int) -> dict:
  """What srun sets for task i of a 2-task step on this host (jax derives the coordinator's
  port from the job id: 61440 + id % 4096)."""
  return {"SLURM_JOB_ID": str(port - 61440), "SLURM_STEP_NODELIST": "127.0.0.1",
          "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
          "SLURM_STEP_NUM_NODES": "1"}


def test_cli_joins_the_processes_srun_describes_without_flags(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port = _free_port_from(61440)  # Above Linux's ephemeral range: what jax picks for SLURM.
  workdir = str(tmp_path / "slurm")
  workers = [subprocess.Popen(
      [sys.executable, "-m", "big_contrast.main", "--config=configs/simclr_digits.py",
       f"--workdir={workdir}", *_TINY_FLAGS, "--config.total_steps=2"],
      env=subprocess_env(2, PYTHONPATH=root, **_srun_env(i, port)), cwd=root,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [w.communicate(timeout=400) for w in workers]
  for w, (_, err) in zip(workers, outs):
    assert w.returncode == 0, err[-3000:]
  assert "Finished 2 steps" in outs[0][0] and "Finished" not in outs[1][0]
  assert "process 1 of 2" in outs[1][1]  # Joined as the second of two processes.
  assert len(_losses(workdir)) == 2


def test_launchers_are_told_apart_by_their_environment():
  from big_contrast import cli
  assert cli.detected_cluster({}) is None
  assert cli.detected_cluster({"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]"}) == "SLURM"
  # An sbatch script itself (no step) and a one-task step are single processes.
  assert cli.detected_cluster({"SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-4]"}) is None
  assert cli.detected_cluster({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}) is None
  assert cli.detected_cluster({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == "TPU on GKE"
  assert cli.detected_cluster({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert cli.detected_cluster({"OMPI_COMM_WORLD_SIZE": "8",
                                "OMPI_MCA_orte_hnp_uri": "123.0;tcp://10.0.0.2:4000"}) == "Open MPI"
  with pytest.raises(app.UsageError, match="pass --coordinator_address=HOST:PORT"):
    cli.detected_cluster({"OMPI_COMM_WORLD_SIZE": "8"})  # Open MPI 5: jax cannot read it.
  env = {"JAX_COORDINATOR_ADDRESS": "trainer-0.trainer:1234", "JAX_NUM_PROCESSES": "4",
         "JOB_COMPLETION_INDEX": "3"}
  assert cli.detected_cluster(env).startswith("Kubernetes")
  assert cli._env_process(env) == ("trainer-0.trainer:1234", 4, 3)
  with pytest.raises(app.UsageError, match="also set JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    cli._env_process({"JAX_COORDINATOR_ADDRESS": "x:1"})
