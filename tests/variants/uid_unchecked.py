"""BUG: bind hands any integer to the session table, which marks the record before packing it.

The seed: ``{"op":"bind","uid":9223372036854775808}`` raised inside the record's write after
it was marked, so the request got no proper answer and every read of the record waited for a
writer that was gone. Caught by scenarios/test_hostile.py (hostile_client).
"""

from reference_server.apps.contract import ContractApp
from reference_server.core import registry
from reference_server.core.registry import SessionTable
from reference_server.ipc import messages as msg
from tests.variants import patch


def apply() -> None:
    def op_bind(self, server, session, request):
        server._owner_op(session, msg.Bind, request.get("uid"))
        return {}

    def _write(self, slot, **changes):
        off = self._offset(slot)
        f = list(registry._RECORD.unpack_from(self._buf, off))
        seq = f[0] + (f[0] & 1)
        registry._SEQ.pack_into(self._buf, off, seq + 1)  # marked first...
        for name, value in changes.items():
            f[registry._FIELD_INDEX[name]] = value
        f[0] = seq + 1
        registry._RECORD.pack_into(self._buf, off, *f)  # ...then a value that does not fit raises
        registry._SEQ.pack_into(self._buf, off, seq + 2)

    patch(ContractApp, "op_bind", op_bind)
    patch(SessionTable, "_write", _write)
