# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault injection for reliability tests.

A fault spec is ``KIND[:key=value[,key=value...]]``:

    throttle:every=N[,count=C][,ops=Op1+Op2][,rate=P,seed=S]
        every Nth matching API call (or each with probability P) is answered
        400 ThrottlingException "Rate exceeded".
    server-error:every=N[,count=C][,ops=...][,rate=P,seed=S]
        the same, answered 500 ServerException.
    access-denied:every=N[,count=C][,ops=...][,rate=P,seed=S]
        the same, answered 400 AccessDeniedException, as IAM denies an action
        (e.g. access-denied:every=1,ops=GetDownloadUrlForLayer).
    lost-response:every=N[,count=C][,ops=...][,rate=P,seed=S]
        the call is carried out, then answered 500 ServerException, as when
        the answer is lost after the service acted (the client retries a
        call that already took effect).
    drop-blob:after=BYTES[,count=C][,digest=D]
        a blob GET response is cut (connection closed) after BYTES bytes of its
        body; only responses longer than BYTES qualify.  count defaults to 1.
    corrupt-blob:offset=OFF[,count=C][,digest=D]  or  corrupt-blob:seed=S[,count=C]
        one byte at blob offset OFF (or at a random offset of the response
        when only seed is given) is flipped in the bytes served.  count 1.
    stall-blob:after=BYTES,seconds=S[,count=C][,digest=D]
        a blob GET response pauses S seconds after BYTES bytes.  count 1.
    expire-urls:after=SECONDS[,count=C]
        blob URLs issued more than SECONDS ago are refused as expired (403),
        whatever their X-Amz-Expires says.  count defaults to unlimited.

Byte values take K, M or G suffixes (binary).  ``count`` bounds how often a
fault fires; ``digest`` limits blob faults to one blob (prefix match).
"""

from __future__ import annotations

import random
import threading
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

API_FAULTS = ('throttle', 'server-error', 'access-denied', 'lost-response')
BLOB_FAULTS = ('drop-blob', 'corrupt-blob', 'stall-blob')

# kind -> {parameter: parser name}
PARAMETERS = {
    'throttle': {'every': 'int', 'rate': 'float', 'count': 'int', 'ops': 'ops', 'seed': 'int'},
    'server-error': {'every': 'int', 'rate': 'float', 'count': 'int', 'ops': 'ops', 'seed': 'int'},
    'access-denied': {'every': 'int', 'rate': 'float', 'count': 'int', 'ops': 'ops', 'seed': 'int'},
    'lost-response': {'every': 'int', 'rate': 'float', 'count': 'int', 'ops': 'ops', 'seed': 'int'},
    'drop-blob': {'after': 'bytes', 'count': 'int', 'digest': 'str'},
    'corrupt-blob': {'offset': 'bytes', 'seed': 'int', 'count': 'int', 'digest': 'str'},
    'stall-blob': {'after': 'bytes', 'seconds': 'float', 'count': 'int', 'digest': 'str'},
    'expire-urls': {'after': 'float', 'count': 'int'},
}
DEFAULT_COUNT = {'drop-blob': 1, 'corrupt-blob': 1, 'stall-blob': 1}

_SUFFIXES = {'k': 1024, 'm': 1024 ** 2, 'g': 1024 ** 3}


def parse_bytes(text: Union[str, int]) -> int:
    if isinstance(text, int):
        value = text
    else:
        text = text.strip().lower()
        if text.endswith('ib'):
            text = text[:-2]
        elif text.endswith('b'):
            text = text[:-1]
        factor = _SUFFIXES.get(text[-1:], 1)
        value = int(float(text[:-1] if factor != 1 else text) * factor)
    if value < 0:
        raise ValueError('negative byte count')
    return value


def _convert(kind: str, name: str, value: Any) -> Any:
    parser = PARAMETERS[kind].get(name)
    if parser is None:
        raise ValueError(f"fault '{kind}' has no parameter '{name}' (known: {', '.join(sorted(PARAMETERS[kind]))})")
    try:
        if parser == 'int':
            return int(value)
        if parser == 'float':
            return float(value)
        if parser == 'bytes':
            return parse_bytes(value)
        if parser == 'ops':
            return [op for op in (value if isinstance(value, list) else str(value).split('+')) if op]
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"fault '{kind}': bad value {value!r} for '{name}'") from None


class Fault:
    def __init__(self, kind: str, params: Dict[str, Any]) -> None:
        if kind not in PARAMETERS:
            raise ValueError(f"unknown fault kind '{kind}' (known: {', '.join(sorted(PARAMETERS))})")
        self.kind = kind
        self.params = {name: _convert(kind, name, value) for name, value in params.items()}
        if kind in API_FAULTS and 'every' not in self.params and 'rate' not in self.params:
            self.params['every'] = 1
        if kind == 'stall-blob':
            self.params.setdefault('seconds', 5.0)
        if kind == 'corrupt-blob' and 'offset' not in self.params and 'seed' not in self.params:
            raise ValueError("fault 'corrupt-blob' needs offset= or seed=")
        if self.params.get('every', 1) < 1:
            raise ValueError(f"fault '{kind}': every must be at least 1")
        self.count = self.params.get('count', DEFAULT_COUNT.get(kind))
        self.random = random.Random(self.params.get('seed'))
        self.seen = 0
        self.fired = 0

    @classmethod
    def parse(cls, spec: Union[str, Dict[str, Any]]) -> 'Fault':
        if isinstance(spec, dict):
            params = dict(spec)
            return cls(str(params.pop('kind', '')), params)
        kind, dummy, rest = str(spec).strip().partition(':')
        params = {}
        for item in rest.split(','):
            if not item.strip():
                continue
            name, sep, value = item.partition('=')
            if not sep:
                raise ValueError(f"fault parameter '{item}' is not name=value")
            params[name.strip()] = value.strip()
        return cls(kind.strip(), params)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def spec(self) -> str:
        values = []
        for name, value in self.params.items():
            values.append(f"{name}={'+'.join(value) if isinstance(value, list) else value}")
        return self.kind + (':' + ','.join(values) if values else '')

    def describe(self) -> Dict[str, Any]:
        return {'kind': self.kind, 'spec': self.spec(), 'params': self.params, 'fired': self.fired, 'seen': self.seen}

    def matches_digest(self, digest: str) -> bool:
        wanted = self.params.get('digest')
        return not wanted or digest.startswith(wanted)


class BlobPlan(NamedTuple):
    """What to do to one blob response body (offsets relative to the body,
    except corrupt_offsets, which are blob offsets)."""
    drop_after: Optional[int]
    stall: Optional[Tuple[int, float]]
    corrupt_offsets: Tuple[int, ...]

    @property
    def empty(self) -> bool:
        return self.drop_after is None and self.stall is None and not self.corrupt_offsets


NO_PLAN = BlobPlan(None, None, ())


class FaultSet:
    """The faults active on a server; safe to use from many threads."""

    def __init__(self, specs: Optional[List[Union[str, Dict[str, Any]]]] = None) -> None:
        self.lock = threading.Lock()
        self.faults: List[Fault] = []
        if specs:
            self.replace(specs)

    def replace(self, specs: List[Union[str, Dict[str, Any]]]) -> None:
        faults = [Fault.parse(spec) for spec in specs]  # parse all before changing anything
        with self.lock:
            self.faults = faults

    def describe(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [fault.describe() for fault in self.faults]

    def api_fault(self, operation: str) -> Optional[str]:
        """Return the kind of API fault to answer this call with, if any."""
        with self.lock:
            for fault in self.faults:
                if fault.kind not in API_FAULTS:
                    continue
                ops = fault.params.get('ops')
                if ops and operation not in ops:
                    continue
                fault.seen += 1
                if fault.exhausted:
                    continue
                if 'rate' in fault.params:
                    fire = fault.random.random() < fault.params['rate']
                else:
                    fire = fault.seen % fault.params['every'] == 0
                if fire:
                    fault.fired += 1
                    return fault.kind
        return None

    def blob_plan(self, digest: str, start: int, length: int) -> BlobPlan:
        drop_after = None
        stall = None
        corrupt: List[int] = []
        with self.lock:
            for fault in self.faults:
                if fault.kind not in BLOB_FAULTS or not fault.matches_digest(digest) or length <= 0:
                    continue
                fault.seen += 1
                if fault.exhausted:
                    continue
                if fault.kind == 'drop-blob' and drop_after is None and length > fault.params.get('after', 0):
                    drop_after = fault.params.get('after', 0)
                elif fault.kind == 'stall-blob' and stall is None and length > fault.params.get('after', 0):
                    stall = (fault.params.get('after', 0), fault.params['seconds'])
                elif fault.kind == 'corrupt-blob':
                    offset = fault.params.get('offset')
                    if offset is None:
                        offset = start + fault.random.randrange(length)
                    if not start <= offset < start + length:
                        continue
                    corrupt.append(offset)
                else:
                    continue
                fault.fired += 1
        return BlobPlan(drop_after, stall, tuple(corrupt))

    def url_expired(self, issued: float, now: float) -> bool:
        with self.lock:
            for fault in self.faults:
                if fault.kind != 'expire-urls':
                    continue
                fault.seen += 1
                if fault.exhausted or now - issued < fault.params.get('after', 0.0):
                    continue
                fault.fired += 1
                return True
        return False
