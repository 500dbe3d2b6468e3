# Sourced by the set-up scripts: sets PY to the Python that hiennu is installed into and run with.
#
#   $PYTHON set                        -> that interpreter, as it is
#   inside a virtual or conda env      -> that environment's python3
#   otherwise                          -> .venv/ in the checkout, created on first use
#
# A stock Debian/Ubuntu Python refuses system-wide pip installs (externally-managed-environment),
# hence the .venv/. It is made with --system-site-packages, so a torch already installed for that
# Python is reused instead of downloaded again; everything else goes into .venv/.
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ] \
        || python3 -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' 2>/dev/null; then
    PY=python3
else
    if [ ! -x .venv/bin/python ]; then
        echo "hiennu: creating a virtual environment in $(pwd)/.venv (set PYTHON=... to use another Python)" >&2
        if ! python3 -m venv --system-site-packages .venv; then
            rm -rf .venv
            echo "hiennu: could not create .venv/; on Debian/Ubuntu: sudo apt install python3-venv" >&2
            exit 1
        fi
    fi
    PY=$(pwd)/.venv/bin/python
fi
export PYTHON=$PY
