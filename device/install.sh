#!/usr/bin/env bash
# Install edgert as a service on a Jetson (JetPack 6) or a desktop Linux box with an NVIDIA GPU.
#
#   sudo device/install.sh            # from a checkout of the repository
#
# - /opt/edgert/.venv: a venv with --system-site-packages, so JetPack's (or the system's) TensorRT
#   Python bindings are visible; edgert with the `tensorrt` extra and cuda-python pinned to the
#   driver's CUDA major (cuda-python 12.x on JetPack 6, whose CUDA is 12.2/12.6).
# - user `edgert`, /etc/edgert/edgert.toml (kept if present), /var/lib/edgert/engines,
#   the systemd unit (Type=notify), then `edgert doctor` to show what it found.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }

PYTHON_BIN="${PYTHON_BIN:-python3}"
if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "install.sh: edgert needs Python >= 3.10; $("$PYTHON_BIN" --version) found" \
         "(JetPack 5 ships 3.8 and is not supported; use JetPack 6)" >&2
    exit 1
fi
if [[ -f /etc/nv_tegra_release ]] && ! grep -q '^# R36' /etc/nv_tegra_release; then
    echo "install.sh: $(head -1 /etc/nv_tegra_release): edgert supports JetPack 6 (L4T R36)" >&2
    exit 1
fi

# The driver's CUDA major decides cuda-python's major (12.x bindings need a CUDA 12 driver).
cuda_major=$("$PYTHON_BIN" - <<'PY' || true
import ctypes
try:
    version = ctypes.c_int()
    ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    print(version.value // 1000)
except OSError:
    pass
PY
)
if [[ -z $cuda_major ]]; then
    echo "install.sh: no NVIDIA driver found (libcuda.so.1); installing for ONNX Runtime (CPU) only"
    extra=""
else
    echo "install.sh: driver supports CUDA $cuda_major.x; cuda-python $cuda_major.x will be used"
    extra="[tensorrt]"
fi
if ! "$PYTHON_BIN" -c 'import tensorrt' 2>/dev/null; then
    echo "install.sh: note: the system Python has no TensorRT bindings (on Jetson: apt install" \
         "python3-libnvinfer; on a desktop: pip install tensorrt into /opt/edgert/.venv)"
fi

command -v mosquitto >/dev/null || echo "install.sh: note: no local mosquitto; point" \
    "/etc/edgert/edgert.toml [broker] at yours, or: apt-get install mosquitto"

id edgert >/dev/null 2>&1 || useradd --system --home /var/lib/edgert --shell /usr/sbin/nologin edgert
# The video group gives access to /dev/nvhost-* on Jetson and /dev/nvidia* on some desktops.
getent group video >/dev/null && usermod -aG video edgert

install -d -o root -g root /opt/edgert
"$PYTHON_BIN" -m venv --system-site-packages /opt/edgert/.venv
/opt/edgert/.venv/bin/python -m pip install -q --upgrade pip
/opt/edgert/.venv/bin/python -m pip install -q ".${extra}"
if [[ -n $cuda_major ]]; then
    /opt/edgert/.venv/bin/python -m pip install -q "cuda-python>=${cuda_major},<$((cuda_major + 1))"
fi

install -d -o root -g edgert -m 0750 /etc/edgert
[[ -f /etc/edgert/edgert.toml ]] || install -o root -g edgert -m 0640 device/edgert.toml /etc/edgert/
install -d -o edgert -g edgert /var/lib/edgert/engines
install -m 0644 device/edgert.service /etc/systemd/system/edgert.service
systemctl daemon-reload

/opt/edgert/.venv/bin/edgert doctor || true
cat <<MSG
install.sh: done. Next:
  copy models to /var/lib/edgert/engines/<model>/ (model.onnx + model.toml), then
  sudo -u edgert /opt/edgert/.venv/bin/edgert compile /var/lib/edgert/engines/<model> --backend auto
  sudo systemctl enable --now edgert
  a broker with TLS, users and the edgert ACL: device/mosquitto/README.md (not installed here)
MSG
