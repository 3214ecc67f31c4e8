# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The options both modules take to reach containerd (the containerd format of the pull and the push).
    DOCUMENTATION = r"""
options:
  containerd_namespace:
    description:
      - For the C(containerd) format, the containerd namespace of the image. Kubernetes uses V(k8s.io).
      - The namespace must exist, except V(default) for a pull, which containerd creates on first use.
    type: str
    default: default
  containerd_address:
    description:
      - For the C(containerd) format, the path of containerd's socket.
    type: path
    default: /run/containerd/containerd.sock
notes:
  - For the C(containerd) format, the task needs the C(ctr) client (shipped with containerd) and access to
    containerd's socket, normally root (set C(become) on the task).
"""
