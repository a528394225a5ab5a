#!/usr/bin/python3
"""Runs a command under an OCI/Docker seccomp profile, the way a container runtime loads it,
without a container runtime: `seccomp_exec.py PROFILE.json -- COMMAND ARGS...`.

Used by tests/deploy_runtime.rs to prove that keygate serves (and batches its writes through
io_uring) under deploy/seccomp/keygate.json. Needs Debian's python3-seccomp (libseccomp's own
bindings). Like runc, a syscall name this architecture does not have is skipped; the filter
sets no_new_privs, as Kubernetes' allowPrivilegeEscalation: false does.
"""
import json
import os
import sys

import seccomp

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}
ARCHES = {"SCMP_ARCH_X86_64": seccomp.Arch.X86_64, "SCMP_ARCH_AARCH64": seccomp.Arch.AARCH64}


def action(name, errno):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno)
    raise SystemExit(f"unsupported action {name}")


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: seccomp_exec.py PROFILE.json -- COMMAND [ARGS...]")
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    native = seccomp.system_arch() & 0xFFFFFFFF
    covered = [ARCHES[a] & 0xFFFFFFFF for a in profile.get("architectures", []) if a in ARCHES]
    if native not in covered:
        raise SystemExit(f"the profile does not cover this architecture ({native:#x})")
    default_errno = profile.get("defaultErrnoRet", 1)
    filt = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], default_errno))
    for rule in profile["syscalls"]:
        act = action(rule["action"], rule.get("errnoRet", default_errno))
        args = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) < 0:
                continue
            filt.add_rule(act, name, *args)
    filt.load()
    os.execv(sys.argv[3], sys.argv[3:])


main()
