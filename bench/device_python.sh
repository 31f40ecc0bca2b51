# Sourced by the device scripts (bench/gpu_check.sh, bench/gpu_mini_world.sh) from the repository root.
# Sets PY: $PYTHON, else this checkout's virtualenv, else the machine's python3. The lent GPU machines have
# PyTorch, transformers and accelerate but neither diffusers nor pydantic: where PY lacks them, the wheels
# carried in .whl are installed with pip --target (make them here first:
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata pydantic==2.14.4 \
#     pydantic_core==2.50.5 annotated_types typing_inspection
# and name `.whl` in the device call's carry).
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if ! "$PY" -c "import diffusers, pydantic" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: $PY lacks diffusers or pydantic, and there is no .whl folder to install them from" \
         "(bench/device_python.sh says how to make one)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: the wheels in .whl do not install for $PY (made for another Python?)" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
