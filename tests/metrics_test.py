"""The progress line's throughput and input-wait share (big_contrast/metrics.py)."""
import json

from absl import logging as absl_logging

from big_contrast import metrics


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_data_wait_share_is_logged_and_an_input_bound_run_warns_once(tmp_path, monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics.time, "time", clock)
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: warnings.append(msg % a))
  logger = metrics.MetricLogger(str(tmp_path), total_steps=30)
  logger.restart_clock(0)
  for step, wait in ((10, 0.5), (20, 6.0), (30, 8.0)):   # Of 10 s between logs.
    clock.now += 10.0
    logger.data_wait(wait)
    logger.progress(step, {"loss": 1.0}, images_per_step=64, num_workers=3)
  logger.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["data_wait_frac"] for r in rows] == [0.05, 0.6, 0.8]
  assert [r["img_per_sec"] for r in rows] == [64.0] * 3
  assert len(warnings) == 1 and "60% of step time" in warnings[0]
  assert "config.data.num_workers (now 3" in warnings[0]


def _tb_events(tb_dir):
  """Every Event in the TensorBoard files of `tb_dir`, in file order (TFRecord framing:
  length, its crc, data, its crc)."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(glob.glob(f"{tb_dir}/events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def test_resume_drops_rows_past_the_step_and_a_torn_line_and_purges_tensorboard(
    tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: warnings.append(msg % a))
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8)
  for step in range(1, 6):
    logger.write(step, {"loss": float(step)})
  logger.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # A process killed mid-write.
  # The run died after step 5; its last checkpoint was step 3.
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8, resume_step=3)
  logger.write(4, {"loss": 40.0})
  logger.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  assert len(warnings) == 1 and "metrics.jsonl line 6 is not a metrics row" in warnings[0]
  assert not (tmp_path / "metrics.jsonl.tmp").exists()
  # TensorBoard hides the dead run's steps 4 and 5: a START session log at step 4.
  events = _tb_events(tmp_path / "tensorboard")
  starts = [e.step for e in events if e.HasField("session_log") and
            e.session_log.status == e.session_log.START]
  assert starts == [4]


def test_a_resumed_run_counts_earlier_sessions_time_and_keeps_their_init_evaluation(
    tmp_path, monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics.time, "time", clock)
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8, start_time=clock.now)
  logger.write(0, {"eval_init/knn_top1": 0.25})
  logger.restart_clock(0)
  for step in (2, 4, 6):
    clock.now += 30.0
    logger.progress(step, {"loss": 1.0}, images_per_step=8)
  logger.close()
  # Killed after step 6; the checkpoint of step 4 is restored, an hour later.
  clock.now += 3600.0
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8, resume_step=4,
                                start_time=clock.now)
  assert logger.earlier_time_s == 60.0 and logger.init_eval == {"eval/knn_top1": 0.25}
  clock.now += 10.0
  assert logger.elapsed_s() == 70.0
  logger.close()


def test_the_first_step_line_shows_its_time_beside_the_metrics(monkeypatch):
  lines = []
  monkeypatch.setattr(absl_logging, "info", lambda msg, *a: lines.append(msg % a))
  logger = metrics.MetricLogger.__new__(metrics.MetricLogger)
  logger.total_steps = 100
  logger.first_step(1, {"loss": 2.5}, "first step 12.0 s (compilation included)")
  assert lines == ["step 1/100  loss=2.5  first step 12.0 s (compilation included)"]


def test_an_evaluation_lands_in_tensorboard_with_the_config_as_hparams(tmp_path):
  import ml_collections
  config = ml_collections.ConfigDict(dict(method="simclr", optimizer=dict(lr=0.5),
                                          mesh=(("data", -1),)))
  assert metrics.hparams(config) == {"method": "simclr", "optimizer.lr": 0.5,
                                     "mesh": "(('data', -1),)"}
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8, resume_step=None)
  logger.evaluation(4, {"eval/knn_top1": 0.75}, config)
  logger.close()
  events = _tb_events(tmp_path / "tensorboard")
  values = [(e.step, v) for e in events if e.HasField("summary") for v in e.summary.value]
  assert any(v.tag == "eval/knn_top1" and abs(v.simple_value - 0.75) < 1e-6 and step == 4
             for step, v in values)
  plugins = {v.metadata.plugin_data.plugin_name for _, v in values}
  assert "hparams" in plugins
  experiment = [v for _, v in values if v.tag == "_hparams_/experiment"]
  assert experiment and b"optimizer.lr" in experiment[0].metadata.plugin_data.content


def test_a_row_appended_beside_a_resuming_run_is_not_lost(tmp_path):
  """An evaluation's logger (resume_step=None) opened before a training run resumes and
  rewrites metrics.jsonl: its row lands in the new file, not in the replaced one."""
  logger = metrics.MetricLogger(str(tmp_path), total_steps=8)
  for step in range(1, 6):
    logger.write(step, {"loss": float(step)})
  logger.close()
  beside = metrics.MetricLogger(str(tmp_path), total_steps=0, resume_step=None)
  resumed = metrics.MetricLogger(str(tmp_path), total_steps=8, resume_step=3)
  beside.write(2, {"eval/knn_top1": 0.5})
  resumed.write(4, {"loss": 40.0})
  beside.close()
  resumed.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 2, 4]
  assert {"step": 2, "eval/knn_top1": 0.5} in rows
