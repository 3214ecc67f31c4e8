# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The options both modules take to reach containerd (the containerd format of the pull and the push;
    # argument spec: module_utils/argspec.py SHARED_OPTIONS).
    DOCUMENTATION = r"""
options:
  containerd_namespace:
    description:
      - For the C(containerd) format, the containerd namespace of the image. Kubernetes uses V(k8s.io).
      - The namespace must exist, except V(default) for a pull, which containerd creates on first use.
      - The default is V(default). Given with another format, it does nothing and the task warns.
    type: str
  containerd_address:
    description:
      - For the C(containerd) format, the path of containerd's socket.
      - The default is V(/run/containerd/containerd.sock). Given with another format, it does nothing and the
        task warns.
    type: path
  containerd_ctr_path:
    description:
      - For the C(containerd) format, the absolute path of containerd's C(ctr) client.
      - When not set, C(ctr) is looked for in V(/usr/local/sbin), V(/usr/local/bin), V(/usr/sbin), V(/usr/bin),
        V(/sbin) and V(/bin), in that order. E(PATH) is not used, since under C(become) it may hold a directory
        another user can write.
      - C(ctr) must be a regular file owned by root (or the user the task runs as) and writable by no one else,
        and so must every directory on its way, symbolic links followed (a sticky directory such as V(/tmp)
        only for entries owned by root or that user); otherwise the task fails.
      - Given with another format, it does nothing and the task warns.
    type: str
notes:
  - For the C(containerd) format, the task needs the C(ctr) client (shipped with containerd) and access to
    containerd's socket, normally root (set C(become) on the task).
"""
