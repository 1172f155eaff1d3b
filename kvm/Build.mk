# kvm/ — the built-in VMM: KVM VM + vCPUs, guest payloads, dirty trackers,
# vCPU and device state.  One implementation of the VMM ops table; never
# includes transport/.
