#!/usr/bin/env bash
# One prepared accelerator check (issue 13), on whatever accelerator JAX finds:
#   1. the speed tables (benchmarks.run: sine main table and time vs tasks),
#   2. the scaling table (benchmarks.scaling over the accelerator's devices),
#   3. a short meta-RL HalfCheetah run (experiments.rl, Brax 'spring'),
#   4. one paper-size HalfCheetah meta-iteration (20 tasks x 20 episodes x 200
#      steps, MAML, TRPO) split into simulation, policy, GAE/baseline,
#      gradients and TRPO (benchmarks.rl_profile).
# Each part has its own time limit, so the whole stays under 10 minutes. It
# writes under benchmarks/results/ (or --out_dir): accelerator.json and
# accelerator.md (what ran, how long, on which devices), accelerator_speed.*,
# accelerator_scaling.*, accelerator_rl.md, accelerator_rl_profile.*. At most
# 10 files, no plots.
#
#   bash benchmarks/accelerator_check.sh                # on a GPU / TPU machine
#   bash benchmarks/accelerator_check.sh --quick        # CPU smoke run, tiny (tests)
#   PYTHON=/path/to/python bash benchmarks/accelerator_check.sh --out_dir=/tmp/out
#
# HalfCheetah needs Brax (pip install -e '.[brax]'); without it the full run
# records the part as failed (exit code 1 at the end). --quick always runs the
# 2D navigation task: the CPU smoke run checks this script, and a Brax compile
# would triple its time (tests/experiments/test_rl_brax.py runs HalfCheetah through the
# same launcher). Exit code: 0 when every part ran.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
QUICK=0
OUT=benchmarks/results
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --out_dir=*) OUT=${arg#--out_dir=} ;;
    *) echo "accelerator_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STATUS="$OUT/.accelerator_status"
: > "$STATUS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

part() {  # part NAME TIMEOUT_S COMMAND...: runs it, records status and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@"
  local rc=$?
  echo "$name $rc $((SECONDS - t0))" >> "$STATUS"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
}

if [[ $QUICK == 1 ]]; then
  part speed 120 "$PY" -m benchmarks.run --quick --sections=main \
    --problems=sine --algorithms=maml --rounds=1 --repeats=1 --noplots \
    --nosweep_torch --out_dir="$OUT" --name=accelerator_speed
  part scaling 120 "$PY" -m benchmarks.scaling --quick --platform=cpu \
    --devices=2 --processes=1 --algorithms=maml --out_dir="$OUT" \
    --name=accelerator_scaling
  part rl 120 "$PY" -m experiments.rl --env=navigation2d --horizon=5 \
    --algorithms=maml --seeds=0 --tasks_per_batch=2 --num_episodes=2 \
    --num_iterations=1 --eval_every=1 --eval_tasks=2 --eval_steps=0 \
    --hidden=8 --meta_optimizer=adam --workdir="$WORK" --run_name=rl
else
  part speed 240 "$PY" -m benchmarks.run --sections=main,tasks \
    --problems=sine --rounds=3 --noplots --out_dir="$OUT" \
    --name=accelerator_speed
  part scaling 90 "$PY" -m benchmarks.scaling --platform=accelerator \
    --out_dir="$OUT" --name=accelerator_scaling
  part rl_profile 150 "$PY" -m benchmarks.rl_profile --num_tasks=20 \
    --num_episodes=20 --horizon=200 --backend=spring --backends=generalized \
    --horizons=200 --repeats=2 --output="$OUT/accelerator_rl_profile.json"
  part rl 120 "$PY" -m experiments.rl --env=halfcheetah_vel \
    --brax_backend=spring --algorithms=maml,ggs_maml --seeds=0 \
    --tasks_per_batch=20 --num_episodes=20 --num_iterations=6 \
    --eval_every=3 --eval_tasks=10 --eval_steps=1 --workdir="$WORK" \
    --run_name=rl
fi
if [[ -f "$WORK/rl/summary.md" ]]; then
  cp "$WORK/rl/summary.md" "$OUT/accelerator_rl.md"
fi

"$PY" - "$OUT" "$QUICK" <<'EOF'
"""accelerator.json / .md: the parts' exit codes and times, the devices."""
import datetime, json, os, sys
import jax
out, quick = sys.argv[1], sys.argv[2] == '1'
parts = {}
with open(os.path.join(out, '.accelerator_status')) as f:
  for line in f:
    name, rc, seconds = line.split()
    parts[name] = {'exit_code': int(rc), 'seconds': int(seconds)}
os.remove(os.path.join(out, '.accelerator_status'))
res = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
       'quick': quick, 'backend': jax.default_backend(),
       'devices': [str(d) for d in jax.devices()], 'parts': parts,
       'files': {'speed': 'accelerator_speed.md',
                 'scaling': 'accelerator_scaling.md', 'rl': 'accelerator_rl.md',
                 'rl_profile': 'accelerator_rl_profile.md'}}
with open(os.path.join(out, 'accelerator.json'), 'w') as f:
  json.dump(res, f, indent=1)
lines = [f"# Accelerator check{' (--quick)' if quick else ''}: "
         f"{res['backend']}, {len(res['devices'])} device(s)", '',
         f"{res['date']}; devices: {', '.join(res['devices'])}", '',
         '| part | exit code | seconds | results |', '|---|---|---|---|']
for name, p in parts.items():
  lines.append(f"| {name} | {p['exit_code']} | {p['seconds']} | "
               f"{res['files'][name]} |")
text = '\n'.join(lines) + '\n'
for name in ('speed', 'scaling', 'rl', 'rl_profile'):
  path = os.path.join(out, res['files'][name])
  if os.path.exists(path):
    text += '\n' + open(path).read()
with open(os.path.join(out, 'accelerator.md'), 'w') as f:
  f.write(text)
print(text)
sys.exit(0 if all(p['exit_code'] == 0 for p in parts.values()) else 1)
EOF
