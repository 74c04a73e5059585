#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are on this machine (Debian/Ubuntu: package dataset-fashion-mnist).
# Usage: scripts/get_fashion_mnist.sh [FOLDER]   (default /usr/share/datasets/fashion-mnist)
set -euo pipefail
root="${1:-/usr/share/datasets/fashion-mnist}"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
have_all() { for f in "${files[@]}"; do [ -f "$root/$f" ] || return 1; done; }
if have_all; then
  echo "Fashion-MNIST: found in $root"
  exit 0
fi
if [ "$root" != "/usr/share/datasets/fashion-mnist" ]; then
  echo "Fashion-MNIST: $root lacks ${files[*]}; put the four IDX files there" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "Fashion-MNIST: not installed and no apt-get here; copy the four IDX .gz files into $root," \
       "or pass --root / --set data.root=FOLDER" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "Fashion-MNIST: installing needs root (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
  sudo="sudo"
fi
echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist (about 30 MB) ..."
$sudo apt-get update -qq
$sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
have_all || { echo "Fashion-MNIST: the package did not put the files in $root" >&2; exit 1; }
echo "Fashion-MNIST: installed in $root"
