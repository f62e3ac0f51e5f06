"""ITS command errors and their architected encodings (IHI 0069 6.3, "Command errors").

An error code has the form 0x01_OO_RR: 0x01 for a command error, OO identifying the
command and RR the reason. There is one way to pick a code: a handler names the failed
:class:`Check`, and :func:`error_code` finds the :class:`ItsError` member called
``<COMMAND>_<CHECK>`` (the spec's own names). The ITS records the error with the command,
its queue offset and an explanation, then stalls or skips the command (error policy).
"""

from __future__ import annotations

import enum


class ItsError(enum.IntEnum):
    """Architected command error codes, named ``<COMMAND>_<REASON>``."""

    MOVI_DEVICE_OOR = 0x010101
    MOVI_COLLECTION_OOR = 0x010103
    MOVI_UNMAPPED_DEVICE = 0x010104
    MOVI_ID_OOR = 0x010105
    MOVI_UNMAPPED_INTERRUPT = 0x010107
    MOVI_UNMAPPED_COLLECTION = 0x010109

    INT_DEVICE_OOR = 0x010301
    INT_UNMAPPED_DEVICE = 0x010304
    INT_ID_OOR = 0x010305
    INT_UNMAPPED_INTERRUPT = 0x010307
    INT_UNMAPPED_COLLECTION = 0x010309  # reason 09 by the spec's pattern (docs/errors.md)

    # CLEAR (opcode 0x04) reports with command byte 0x05 in every public source.
    CLEAR_DEVICE_OOR = 0x010501
    CLEAR_UNMAPPED_DEVICE = 0x010504
    CLEAR_ID_OOR = 0x010505
    CLEAR_UNMAPPED_INTERRUPT = 0x010507
    CLEAR_UNMAPPED_COLLECTION = 0x010509

    MAPD_DEVICE_OOR = 0x010801
    MAPD_ITTSIZE_OOR = 0x010802

    MAPC_PROCNUM_OOR = 0x010902
    MAPC_COLLECTION_OOR = 0x010903

    MAPTI_DEVICE_OOR = 0x010A01
    MAPTI_COLLECTION_OOR = 0x010A03
    MAPTI_UNMAPPED_DEVICE = 0x010A04
    MAPTI_ID_OOR = 0x010A05
    MAPTI_PHYSICALID_OOR = 0x010A06

    MAPI_DEVICE_OOR = 0x010B01
    MAPI_COLLECTION_OOR = 0x010B03
    MAPI_UNMAPPED_DEVICE = 0x010B04
    MAPI_ID_OOR = 0x010B05
    MAPI_PHYSICALID_OOR = 0x010B06  # EventID used as pINTID is not a valid LPI

    INV_DEVICE_OOR = 0x010C01
    INV_UNMAPPED_DEVICE = 0x010C04
    INV_ID_OOR = 0x010C05
    INV_UNMAPPED_INTERRUPT = 0x010C07
    INV_UNMAPPED_COLLECTION = 0x010C09

    INVALL_COLLECTION_OOR = 0x010D03
    INVALL_UNMAPPED_COLLECTION = 0x010D09

    MOVALL_PROCNUM_OOR = 0x010E01

    DISCARD_DEVICE_OOR = 0x010F01
    DISCARD_UNMAPPED_DEVICE = 0x010F04
    DISCARD_ID_OOR = 0x010F05
    DISCARD_UNMAPPED_INTERRUPT = 0x010F07
    DISCARD_UNMAPPED_COLLECTION = 0x010F09

    # Not architected error codes: vgic reports these for conditions the architecture
    # leaves IMPLEMENTATION DEFINED (docs/choices.md). They use command byte 0xFF.
    UNKNOWN_COMMAND = 0x01FF00  # an opcode this ITS does not implement
    MEMORY_FAULT = 0x01FF01  # a table or queue access outside guest RAM


class Check(enum.Enum):
    """What failed: the reason part of an error's name (6.3). Which reason byte it is
    depends on the command (MAPC and MOVALL report PROCNUM_OOR as 02 and 01)."""

    DEVICE_OOR = "DeviceID out of range"
    ITTSIZE_OOR = "ITT size out of range"
    PROCNUM_OOR = "processor number out of range"
    COLLECTION_OOR = "collection ID out of range"
    UNMAPPED_DEVICE = "device not mapped"
    ID_OOR = "EventID out of range"
    PHYSICALID_OOR = "physical LPI ID out of range"
    UNMAPPED_INTERRUPT = "event not mapped"
    UNMAPPED_COLLECTION = "collection not mapped"


def error_code(command: str, check: Check) -> ItsError:
    """The architected code of ``check`` failing in ``command`` (e.g. "MAPTI")."""
    return ItsError[f"{command}_{check.name}"]


class CommandError(Exception):
    """Raised by a command handler; carries the code and a one-line explanation."""

    def __init__(self, error: ItsError, explanation: str) -> None:
        super().__init__(explanation)
        self.error = error
        self.explanation = explanation

    @classmethod
    def of(cls, command: str, check: Check, explanation: str) -> CommandError:
        return cls(error_code(command, check), explanation)
