//! PSCI calls (Arm DEN 0022, PSCI 1.1) and the SMCCC calls around them
//! (DEN 0028): the function id in w0, arguments in x1..x3, the result in
//! x0. Under HVF the VMM implements PSCI itself (QEMU's `virt` uses the
//! HVC conduit); this is the decoding, the VMM the policy.

/// Function ids (SMC32 / SMC64 forms where both exist).
pub mod id {
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xc400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
    pub const SYSTEM_RESET2_64: u32 = 0xc400_0012;
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
}

/// PSCI return codes, as x0 carries them (sign-extended to 64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Success = 0,
    NotSupported = -1,
    InvalidParameters = -2,
    Denied = -3,
    AlreadyOn = -4,
    OnPending = -5,
    InternalFailure = -6,
    NotPresent = -7,
    Disabled = -8,
    InvalidAddress = -9,
}

impl Status {
    /// The value for x0.
    pub fn x0(self) -> u64 {
        i64::from(self as i32) as u64
    }
}

/// The PSCI version this decoder knows: 1.1 (major << 16 | minor), what
/// QEMU's `virt` reports.
pub const VERSION_1_1: u32 = 1 << 16 | 1;
/// SMCCC 1.1, the version that has SMCCC_ARCH_FEATURES.
pub const SMCCC_1_1: u32 = 1 << 16 | 1;

/// One call, its arguments typed. 32-bit calls (SMC32 ids) only see the
/// low 32 bits of each argument, as the convention says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Version,
    CpuSuspend {
        power_state: u32,
        entry: u64,
        context_id: u64,
    },
    CpuOff,
    /// Start the vCPU whose MPIDR affinity is `target` at `entry` with
    /// `context_id` in its x0.
    CpuOn {
        target: u64,
        entry: u64,
        context_id: u64,
    },
    AffinityInfo {
        target: u64,
        lowest_level: u32,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    SystemReset2 {
        reset_type: u32,
        cookie: u64,
    },
    /// Does the implementation have `function`?
    Features {
        function: u32,
    },
    SmcccVersion,
    SmcccArchFeatures {
        function: u32,
    },
    /// Anything else: SMCCC says every unknown call answers NOT_SUPPORTED (-1).
    Unknown {
        function: u32,
    },
}

impl Call {
    /// The call in x0..x3 (w0 is the function id).
    pub fn decode(x: [u64; 4]) -> Call {
        let function = x[0] as u32;
        // SMC32 calls take 32-bit arguments; SMC64 (bit 30) the whole register.
        let arg = |i: usize| {
            if function & (1 << 30) != 0 {
                x[i]
            } else {
                x[i] & 0xffff_ffff
            }
        };
        match function {
            id::PSCI_VERSION => Call::Version,
            id::CPU_SUSPEND_32 | id::CPU_SUSPEND_64 => Call::CpuSuspend {
                power_state: x[1] as u32,
                entry: arg(2),
                context_id: arg(3),
            },
            id::CPU_OFF => Call::CpuOff,
            id::CPU_ON_32 | id::CPU_ON_64 => Call::CpuOn {
                target: arg(1),
                entry: arg(2),
                context_id: arg(3),
            },
            id::AFFINITY_INFO_32 | id::AFFINITY_INFO_64 => Call::AffinityInfo {
                target: arg(1),
                lowest_level: x[2] as u32,
            },
            id::MIGRATE_INFO_TYPE => Call::MigrateInfoType,
            id::SYSTEM_OFF => Call::SystemOff,
            id::SYSTEM_RESET => Call::SystemReset,
            id::SYSTEM_RESET2_32 | id::SYSTEM_RESET2_64 => Call::SystemReset2 {
                reset_type: x[1] as u32,
                cookie: arg(2),
            },
            id::PSCI_FEATURES => Call::Features {
                function: x[1] as u32,
            },
            id::SMCCC_VERSION => Call::SmcccVersion,
            id::SMCCC_ARCH_FEATURES => Call::SmcccArchFeatures {
                function: x[1] as u32,
            },
            function => Call::Unknown { function },
        }
    }

    /// Whether `function` is one this decoder knows (the PSCI_FEATURES
    /// answer of a VMM that implements every call here).
    pub fn known(function: u32) -> bool {
        !matches!(
            Call::decode([u64::from(function), 0, 0, 0]),
            Call::Unknown { .. }
        )
    }
}

/// MIGRATE_INFO_TYPE's answer for a VMM without a Trusted OS: 2, "not
/// present or does not require migration".
pub const MIGRATE_INFO_NO_TOS: u64 = 2;

/// AFFINITY_INFO's answers.
pub mod affinity {
    pub const ON: u64 = 0;
    pub const OFF: u64 = 1;
    pub const ON_PENDING: u64 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_decode_with_their_arguments() {
        assert_eq!(
            Call::decode([u64::from(id::PSCI_VERSION), 9, 9, 9]),
            Call::Version
        );
        // CPU_ON, 64-bit: the whole registers.
        assert_eq!(
            Call::decode([
                0xc400_0003,
                0x1_0000_0101,
                0x4008_0000,
                0xdead_beef_0000_0001
            ]),
            Call::CpuOn {
                target: 0x1_0000_0101,
                entry: 0x4008_0000,
                context_id: 0xdead_beef_0000_0001
            }
        );
        // CPU_ON, 32-bit: only the low halves.
        assert_eq!(
            Call::decode([0x8400_0003, 0xffff_ffff_0000_0001, 0x1_4008_0000, u64::MAX]),
            Call::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context_id: 0xffff_ffff
            }
        );
        // The function id is w0: garbage in x0's upper half does not matter.
        assert_eq!(
            Call::decode([0xffff_ffff_8400_0008, 0, 0, 0]),
            Call::SystemOff
        );
        assert_eq!(Call::decode([0x8400_0009, 0, 0, 0]), Call::SystemReset);
        assert_eq!(Call::decode([0x8400_0002, 0, 0, 0]), Call::CpuOff);
        assert_eq!(
            Call::decode([0xc400_0004, 0x101, 0, 0]),
            Call::AffinityInfo {
                target: 0x101,
                lowest_level: 0
            }
        );
        assert_eq!(
            Call::decode([0xc400_0001, 0x1_0000, 0x4000_0000, 7]),
            Call::CpuSuspend {
                power_state: 0x1_0000,
                entry: 0x4000_0000,
                context_id: 7
            }
        );
        assert_eq!(
            Call::decode([0xc400_0012, 0x8000_0000, 0x1234_5678_9abc, 0]),
            Call::SystemReset2 {
                reset_type: 0x8000_0000,
                cookie: 0x1234_5678_9abc
            }
        );
        assert_eq!(
            Call::decode([0x8400_000a, 0xc400_0003, 0, 0]),
            Call::Features {
                function: id::CPU_ON_64
            }
        );
        assert_eq!(Call::decode([0x8000_0000, 0, 0, 0]), Call::SmcccVersion);
        assert_eq!(
            Call::decode([0x8000_0001, 0x8000_8000, 0, 0]),
            Call::SmcccArchFeatures {
                function: 0x8000_8000
            }
        );
        assert_eq!(Call::decode([0x8400_0006, 0, 0, 0]), Call::MigrateInfoType);
    }

    #[test]
    fn unknown_calls_and_features() {
        // MIGRATE (0x84000005) is optional and not implemented here.
        assert_eq!(
            Call::decode([0x8400_0005, 0, 0, 0]),
            Call::Unknown {
                function: 0x8400_0005
            }
        );
        assert!(Call::known(id::CPU_ON_64) && Call::known(id::SYSTEM_OFF));
        assert!(!Call::known(0x8400_0005) && !Call::known(0xc200_0000));
    }

    #[test]
    fn status_codes_are_sign_extended_for_x0() {
        assert_eq!(Status::Success.x0(), 0);
        assert_eq!(Status::NotSupported.x0(), u64::MAX);
        assert_eq!(Status::AlreadyOn.x0(), (-4i64) as u64);
        assert_eq!(Status::InvalidAddress.x0(), 0xffff_ffff_ffff_fff7);
        assert_eq!(VERSION_1_1, 0x0001_0001);
    }
}
