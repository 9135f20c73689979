"""What every command-line entry point shares: joining a multi-process run, parsing flags
with the fix for a bad --config or --config.KEY named, and the one-line errors.

A process that srun, mpirun, GKE's TPU slices or a Kubernetes indexed Job started joins the
run from their environment (`detected_cluster`); otherwise give
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit), or
  --distributed                                                      (auto, e.g. Cloud TPU VMs)
"""
import ast
import difflib
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from big_contrast import run_config
from big_contrast import train

_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 for jax.distributed (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "jax.distributed.initialize() with the cluster auto-detected (also "
    "Cloud TPU VM slices, from their metadata). Unset: whenever the environment describes "
    "several processes (srun under SLURM, a TPU slice on GKE, mpirun, a Kubernetes indexed Job "
    "or JobSet); --nodistributed: never.")

def detected_cluster(env=os.environ) -> str | None:
  """The multi-process launcher this process runs under, from its environment; None for a
  single process. srun sets SLURM_NTASKS and SLURM_STEP_NODELIST (a batch script alone has no
  step node list); GKE, on each host of a multi-host TPU slice, TPU_WORKER_HOSTNAMES; Open MPI
  OMPI_COMM_WORLD_SIZE; a Kubernetes indexed Job or JobSet's manifest JAX_COORDINATOR_ADDRESS
  (with JAX_NUM_PROCESSES; the Job sets JOB_COMPLETION_INDEX)."""
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env:
    return "SLURM"
  if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    return "TPU on GKE"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    if "OMPI_MCA_orte_hnp_uri" not in env:  # What jax reads; Open MPI 5 (PRRTE) lacks it.
      raise app.UsageError(
          "mpirun started this process as one of several, but jax cannot find the run's "
          "coordinator in its environment (Open MPI 5): pass --coordinator_address=HOST:PORT "
          "--num_processes=$OMPI_COMM_WORLD_SIZE --process_id=$OMPI_COMM_WORLD_RANK.")
    return "Open MPI"
  if "JAX_COORDINATOR_ADDRESS" in env:
    return "Kubernetes / JAX_COORDINATOR_ADDRESS"
  return None


def _env_process(env=os.environ) -> tuple | None:
  """(coordinator, processes, process id) from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID or JOB_COMPLETION_INDEX, which jax itself does not all read."""
  if "JAX_COORDINATOR_ADDRESS" not in env:
    return None
  index = env.get("JAX_PROCESS_ID", env.get("JOB_COMPLETION_INDEX"))
  if "JAX_NUM_PROCESSES" not in env or index is None:
    raise app.UsageError("JAX_COORDINATOR_ADDRESS is set, so this process joins a multi-process "
                         "run: also set JAX_NUM_PROCESSES and JAX_PROCESS_ID (a Kubernetes "
                         "indexed Job sets JOB_COMPLETION_INDEX, which serves as the id).")
  return env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(index)


def init_distributed():
  """jax.distributed from the flags or the environment; a no-op for a single process."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cluster = "flags"
  if any(v is not None for v in explicit):
    if None in explicit:
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                           "together; give all three (or --distributed to auto-detect).")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      raise app.UsageError(f"--process_id={_PROCESS_ID.value} must be in "
                           f"[0, --num_processes={_NUM_PROCESSES.value}).")
  elif _DISTRIBUTED.value is False:
    return
  else:
    cluster = detected_cluster()
    if cluster is None and not _DISTRIBUTED.value:
      return
    explicit = _env_process() or explicit
  # Cross-process collectives on the CPU backend (tests, CPU clusters); GPUs/TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit[0]:
    jax.distributed.initialize(*explicit)
  else:
    jax.distributed.initialize()  # jax reads the cluster (SLURM, TPU, Open MPI) itself.
  logging.info("jax.distributed (%s): process %d of %d.", cluster or "auto-detected",
               jax.process_index(), jax.process_count())


def flag_values(argv, name: str) -> list:
  """The values of --NAME=V / --NAME V in `argv` (before a bare --)."""
  out = []
  for i, a in enumerate(argv):
    if a == "--":
      break
    if a.startswith(f"--{name}="):
      out.append(a.split("=", 1)[1])
    elif a == f"--{name}" and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _is_recipe(path: str) -> bool:
  with open(path) as f:
    return "def get_config(" in f.read()


def _load_recipe(value: str):
  """The ConfigDict of --config=PATH[:ARG], loaded as config_flags loads it."""
  path, _, arg = value.partition(":")
  spec = importlib.util.spec_from_file_location("_recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _config_file_problem(argv):
  """A --config that names no file: which recipes there are."""
  for value in flag_values(argv, "config"):
    path = value.split(":", 1)[0]  # config_flags passes what follows ':' to get_config.
    if not os.path.isfile(path):
      folder = os.path.dirname(path) or "."
      recipes = sorted(f for f in os.listdir(folder) if f.endswith(".py") and _is_recipe(
          os.path.join(folder, f))) if os.path.isdir(folder) else []
      near = difflib.get_close_matches(os.path.basename(path), recipes, n=1, cutoff=0.6)
      hint = (f"did you mean {os.path.join(folder, near[0])}?" if near else
              f"{folder} has {recipes}." if recipes else
              "the recipes are in configs/ (run from the repository root).")
      return f"--config={value}: no such file; {hint}"
  return None


def _declared_absent(argv) -> tuple[list, dict]:
  """(argv without them, {key: value}) of the --config.KEY=VALUE overrides of keys the run
  declares but its recipe does not hold (optional settings such as optimizer.eps, or keys a
  recipe that builds its own model section leaves out): config_flags can only override what
  the recipe holds, so these are set after it parsed the rest."""
  values = flag_values(argv, "config")
  if not values:
    return argv, {}
  config = _load_recipe(values[-1])
  method = config.get("method")
  if method not in run_config.methods.METHODS.names():
    return argv, {}
  present = set(run_config.flatten(config))
  declared = set(run_config.settings.flatten(run_config.declared(method)))
  keep, absent = [], {}
  for a in argv:
    key, eq, value = a[len("--config."):].partition("=") if a.startswith("--config.") else (
        "", "", "")
    if eq and key in declared and key not in present:
      absent[key] = _literal(value)
    else:
      keep.append(a)
  return keep, absent


def _literal(text: str):
  """A flag's value as Python reads it (1e-4, True, (1, 2)); else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override_problems(argv, config) -> list:
  """Each --config.KEY=V whose KEY the recipe does not have, with the likely fix."""
  present = set(run_config.flatten(config))
  known, declared = set(present), set()
  method = config.get("method")
  if method in run_config.methods.METHODS.names():
    declared = set(run_config.settings.flatten(run_config.declared(method)))
    known |= declared
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  problems = []
  for k in keys:
    if k in present or any(n.startswith(k + ".") for n in present):
      continue  # A key or a whole section the recipe has is fine.
    if k in declared:  # Only a saved config.json (evaluate) gets here: parse_flags sets them.
      problems.append(f"--config.{k}: {method} declares it, but the run's saved config does "
                      "not hold it; evaluate with --config=RECIPE to set it.")
    elif not any(n.startswith(k + ".") for n in known):
      problems.append(run_config.unknown_key_message(k, known, method))
  return problems


def parse_flags(argv):
  """absl's flag parsing, with a --config file or --config.KEY override that is not there
  named with the fix (config_flags reports either as a bare OSError or AttributeError), and
  the declared keys the recipe does not hold set once config_flags parsed the rest."""
  problem = _config_file_problem(argv)
  if problem is None:
    try:
      kept, absent = _declared_absent(argv)
      # config_flags reads its overrides from sys.argv itself.
      sys.argv[:] = [a for a in sys.argv if a in kept or not a.startswith("--config.")]
      rest = app.parse_flags_with_usage(kept)
      if absent:  # Checked with the rest of the config when the run sets up.
        config = flags.FLAGS["config"].value
        config.unlock()
        for key, value in absent.items():
          *parents, leaf = key.split(".")
          section = config
          for name in parents:
            section = section[name]
          section[leaf] = value
        config.lock()
      return rest
    except (AttributeError, KeyError) as e:
      values = flag_values(argv, "config")
      problems = override_problems(argv, _load_recipe(values[-1])) if values else []
      problem = "\n".join(problems) or f"a --config.KEY override failed: {e}"
  sys.stderr.write(f"FATAL Flags parsing error: {problem}\n")
  sys.exit(2)


# What a config, the data, the workdir or the training itself can get wrong: each says what
# and how to fix it, so the console shows the message alone (the traceback goes to log.txt).
USER_ERRORS = (ValueError, OSError, train.WorkdirInUse, train.NonFiniteError)


def run_tool(main):
  """A tool's command line (tools/*.py): a config or flag it gets wrong ends the command with
  its message on one line and exit code 1, as `big_contrast.main` does; BIG_CONTRAST_TRACEBACK=1
  shows the traceback too."""
  try:
    main()
  except USER_ERRORS as e:
    if os.environ.get("BIG_CONTRAST_TRACEBACK"):
      raise
    sys.exit(f"FATAL {type(e).__name__}: {e}\n(BIG_CONTRAST_TRACEBACK=1 shows the traceback.)")


def error_message(e: Exception, workdir: str) -> str:
  index = jax.process_index()
  prefix = f"process {index}: " if jax.process_count() > 1 else ""
  log = os.path.join(workdir, "log.txt" if index == 0 else f"log.process_{index}.txt")
  # A run refused at the lock wrote nothing; the log there is another run's.
  logged = os.path.isfile(log) and not isinstance(e, (train.WorkdirInUse,
                                                      train.WorkdirNotWritable))
  where = f"\n(The traceback is in {log}.)" if logged else ""
  return f"FATAL {prefix}{type(e).__name__}: {e}{where}"
