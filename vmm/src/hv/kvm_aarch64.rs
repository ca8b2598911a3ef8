//! KVM implementation of the hypervisor boundary on arm64: the same `Vm`,
//! `Vcpu` and `VmExit` surface as `kvm.rs` (x86_64), with the arm64 state
//! types of `aarch64.rs`: KVM_ARM_VCPU_INIT with PSCI 0.2, core registers
//! through KVM_SET_ONE_REG, and the in-kernel GICv3 (KVM_CREATE_DEVICE).
//! PSCI itself (CPU_ON, SYSTEM_OFF, SYSTEM_RESET) is KVM's: the last two
//! arrive as system events.

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use devices::notifier::Notifier;
use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_MSI_VALID_DEVID, KVM_REG_ARM_CORE, KVM_REG_ARM64,
    KVM_REG_ARM64_SYSREG, KVM_REG_SIZE_U64, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, KVM_VGIC_ITS_ADDR_TYPE, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    kvm_irq_routing_entry, kvm_vcpu_init,
};
use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};

use super::aarch64::{CoreRegs, GicConfig, GsiRoute, MsiController, VcpuInit};
use super::kvm_shared::{Assign, RoutingError, ioeventfd, memory_slot, msi_entry, set_gsi_routing};
use super::{IoEventAddr, SystemEvent, VmExit};

/// Errors from KVM calls, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/dev/kvm: {0}{hint}", hint = open_hint(.0))]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM: {op} failed: {err}")]
    Ioctl {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM: the GICv3 was finalized before it was created")]
    NoGic,
    #[error("KVM: too many {what} ({count})")]
    TooMany { what: &'static str, count: usize },
    #[error("KVM's GICv3 has no message-based SPIs (MBI): its MSIs go through an ITS")]
    NoMbi,
}

impl Error {
    /// 2 when /dev/kvm cannot be opened (a set-up the user fixes), 1 for
    /// anything KVM refuses later.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Open(_) | Error::ApiVersion(_) => 2,
            _ => 1,
        }
    }
}

fn open_hint(e: &kvm_ioctls::Error) -> &'static str {
    match e.errno() {
        libc::EACCES | libc::EPERM => {
            "; add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again)"
        }
        libc::ENOENT | libc::ENXIO | libc::ENODEV => {
            "; KVM is not available: boot the kernel at EL2 (a virtualization-capable CPU or virtualization=on under QEMU)"
        }
        _ => "",
    }
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Ioctl { op, err }
}

/// The in-kernel interrupt controller: the GICv3 and its ITS, if any.
#[derive(Debug)]
struct Gic {
    gic: DeviceFd,
    its: Option<DeviceFd>,
}

/// A KVM VM with, once created, its in-kernel GICv3.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    gic: Mutex<Option<Gic>>,
    _kvm: Kvm,
}

impl Vm {
    /// Opens /dev/kvm and creates an empty VM (the host's default IPA size).
    pub fn new() -> Result<Vm, Error> {
        let kvm = Kvm::new().map_err(Error::Open)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(Error::ApiVersion(v));
        }
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        Ok(Vm {
            fd,
            gic: Mutex::new(None),
            _kvm: kvm,
        })
    }

    /// Sets memory slot `slot` to `[host, host + size)` at `gpa` (see the
    /// x86 twin in `kvm.rs`).
    ///
    /// # Safety
    /// `host` must point to a mapping of at least `size` bytes that stays
    /// mapped while the slot is set (the guest reads and writes it).
    pub unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
        readonly: bool,
    ) -> Result<(), Error> {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { memory_slot(&self.fd, slot, gpa, host, size, readonly) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Deletes memory slot `slot` (a PCI memory BAR the guest moved or
    /// turned off).
    pub fn remove_memory_slot(&self, slot: u32) -> Result<(), Error> {
        // SAFETY: a zero-sized region maps no host memory; it deletes the slot.
        unsafe { memory_slot(&self.fd, slot, 0, std::ptr::null_mut(), 0, false) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Connects `evt` to SPI `spi` of the GIC (irqfd): a write to it raises
    /// the line without an exit. Needs the GIC.
    pub fn register_irqfd(&self, evt: &Notifier, spi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt.eventfd(), spi)
            .map_err(ioctl("KVM_IRQFD"))
    }

    /// Makes guest writes to MMIO `addr` signal `evt` instead of exiting.
    pub fn register_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        ioeventfd(&self.fd, evt.eventfd(), addr, datamatch, Assign::Add)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Creates vCPU `id` (not yet initialized: see [`Vcpu::init`]).
    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, Error> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu { fd, id })
    }

    /// KVM_ARM_PREFERRED_TARGET plus `init`'s features, for
    /// [`Vcpu::init`].
    fn vcpu_init(&self, init: VcpuInit) -> Result<kvm_vcpu_init, Error> {
        let mut kvi = kvm_vcpu_init::default();
        self.fd
            .get_preferred_target(&mut kvi)
            .map_err(ioctl("KVM_ARM_PREFERRED_TARGET"))?;
        if init.psci_0_2 {
            kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        }
        if init.powered_off {
            kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        Ok(kvi)
    }

    /// Creates the in-kernel GICv3 and places its distributor and
    /// redistributors (before the vCPUs run; [`Vm::finalize_gic`] after
    /// every vCPU is created).
    pub fn create_gic(&self, cfg: &GicConfig) -> Result<(), Error> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = self
            .fd
            .create_device(&mut dev)
            .map_err(ioctl("KVM_CREATE_DEVICE (GICv3)"))?;
        for (attr, addr) in [
            (KVM_VGIC_V3_ADDR_TYPE_DIST, cfg.dist_addr),
            (KVM_VGIC_V3_ADDR_TYPE_REDIST, cfg.redist_addr),
        ] {
            set_attr(
                &gic,
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                u64::from(attr),
                &raw const addr as u64,
            )
            .map_err(ioctl("KVM_SET_DEVICE_ATTR (GICv3 address)"))?;
        }
        let nr_irqs = cfg.nr_irqs;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &raw const nr_irqs as u64,
        )
        .map_err(ioctl("KVM_SET_DEVICE_ATTR (GICv3 NR_IRQS)"))?;
        let its = match cfg.msi {
            None => None,
            Some(MsiController::Mbi { .. }) => return Err(Error::NoMbi),
            Some(MsiController::Its { addr }) => {
                let mut dev = kvm_create_device {
                    type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
                    fd: 0,
                    flags: 0,
                };
                let its = self
                    .fd
                    .create_device(&mut dev)
                    .map_err(ioctl("KVM_CREATE_DEVICE (GICv3 ITS)"))?;
                set_attr(
                    &its,
                    KVM_DEV_ARM_VGIC_GRP_ADDR,
                    u64::from(KVM_VGIC_ITS_ADDR_TYPE),
                    &raw const addr as u64,
                )
                .map_err(ioctl("KVM_SET_DEVICE_ATTR (ITS address)"))?;
                Some(its)
            }
        };
        *self.gic.lock().unwrap_or_else(|e| e.into_inner()) = Some(Gic { gic, its });
        Ok(())
    }

    /// Initializes the GIC, then its ITS (KVM_DEV_ARM_VGIC_CTRL_INIT):
    /// after every vCPU is created and initialized, before the first
    /// KVM_RUN.
    pub fn finalize_gic(&self) -> Result<(), Error> {
        let gic = self.gic.lock().unwrap_or_else(|e| e.into_inner());
        let gic = gic.as_ref().ok_or(Error::NoGic)?;
        let init = u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT);
        set_attr(&gic.gic, KVM_DEV_ARM_VGIC_GRP_CTRL, init, 0)
            .map_err(ioctl("KVM_SET_DEVICE_ATTR (GICv3 CTRL_INIT)"))?;
        if let Some(its) = &gic.its {
            set_attr(its, KVM_DEV_ARM_VGIC_GRP_CTRL, init, 0)
                .map_err(ioctl("KVM_SET_DEVICE_ATTR (ITS CTRL_INIT)"))?;
        }
        Ok(())
    }

    /// Replaces the VM's interrupt routing table (KVM_SET_GSI_ROUTING).
    pub fn set_gsi_routing(&self, routes: &[GsiRoute]) -> Result<(), Error> {
        let entries: Vec<kvm_irq_routing_entry> = routes.iter().map(route_to_kvm).collect();
        set_gsi_routing(&self.fd, &entries).map_err(|e| match e {
            RoutingError::TooMany(count) => Error::TooMany {
                what: "GSI routes",
                count,
            },
            RoutingError::Ioctl(err) => ioctl("KVM_SET_GSI_ROUTING")(err),
        })
    }

    /// Undoes [`Vm::register_irqfd`].
    pub fn unregister_irqfd(&self, evt: &Notifier, gsi: u32) -> Result<(), Error> {
        self.fd
            .unregister_irqfd(evt.eventfd(), gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }

    /// Undoes [`Vm::register_ioeventfd`].
    pub fn unregister_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        ioeventfd(&self.fd, evt.eventfd(), addr, datamatch, Assign::Remove)
            .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }

    /// The VM fd, for the teardown hand-off only.
    pub fn teardown_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// An SPI route names the GIC (irqchip 0) and the SPI; an MSI route
/// carries its device ID for the ITS.
fn route_to_kvm(r: &GsiRoute) -> kvm_irq_routing_entry {
    match *r {
        GsiRoute::Spi { gsi, spi } => {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = 0;
            e.u.irqchip.pin = spi;
            e
        }
        GsiRoute::Msi {
            gsi,
            address,
            data,
            devid,
        } => {
            let mut e = msi_entry(gsi, address, data);
            e.flags = KVM_MSI_VALID_DEVID;
            e.u.msi.__bindgen_anon_1.devid = devid;
            e
        }
    }
}

fn set_attr(dev: &DeviceFd, group: u32, attr: u64, addr: u64) -> Result<(), kvm_ioctls::Error> {
    dev.set_device_attr(&kvm_device_attr {
        group,
        attr,
        addr,
        flags: 0,
    })
}

/// KVM_REG id of a 64-bit core register at byte `offset` of `struct
/// kvm_regs` (`regs.regs[31]`, `sp`, `pc`, `pstate`).
const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4)
}
const REG_X0: u64 = core_reg(0);
const REG_PC: u64 = core_reg(32 * 8);
const REG_PSTATE: u64 = core_reg(33 * 8);
/// MPIDR_EL1: op0 3, op1 0, CRn 0, CRm 0, op2 5.
const REG_MPIDR_EL1: u64 =
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG as u64 | (3 << 14) | 5;

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

impl Vcpu {
    pub fn id(&self) -> u8 {
        self.id
    }

    /// KVM_ARM_VCPU_INIT with the host's preferred target and `init`'s
    /// features.
    pub fn init(&self, vm: &Vm, init: VcpuInit) -> Result<(), Error> {
        let kvi = vm.vcpu_init(init)?;
        self.fd.vcpu_init(&kvi).map_err(ioctl("KVM_ARM_VCPU_INIT"))
    }

    /// Sets the entry registers (after [`Vcpu::init`], which resets them).
    pub fn set_core_regs(&self, r: &CoreRegs) -> Result<(), Error> {
        for (id, v) in [(REG_X0, r.x0), (REG_PSTATE, r.pstate), (REG_PC, r.pc)] {
            self.fd
                .set_one_reg(id, &v.to_le_bytes())
                .map_err(ioctl("KVM_SET_ONE_REG"))?;
        }
        Ok(())
    }

    fn reg(&self, id: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.fd
            .get_one_reg(id, &mut b)
            .map_err(ioctl("KVM_GET_ONE_REG"))?;
        Ok(u64::from_le_bytes(b))
    }

    /// The program counter (for reports).
    pub fn pc(&self) -> Result<u64, Error> {
        self.reg(REG_PC)
    }

    /// MPIDR_EL1 as KVM set it: the CPU's affinity, its `reg` in the
    /// device tree.
    pub fn mpidr(&self) -> Result<u64, Error> {
        self.reg(REG_MPIDR_EL1)
    }

    /// See the x86 twin in `kvm.rs`.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Suberror and data words of the last KVM_EXIT_INTERNAL_ERROR.
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let run = self.fd.get_kvm_run();
        // SAFETY: only called after KVM_RUN reported KVM_EXIT_INTERNAL_ERROR,
        // which makes `internal` the active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, internal.data[..n].to_vec())
    }

    /// Enters the guest until the next exit. Only MMIO reaches the VMM on
    /// arm64 (no port I/O).
    pub fn run(&mut self) -> Result<VmExit<'_>, Error> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
                VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
                VcpuExit::Hlt => VmExit::Hlt,
                VcpuExit::Shutdown => VmExit::Shutdown,
                VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                    other => SystemEvent::Other(other),
                }),
                VcpuExit::InternalError => VmExit::InternalError,
                VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
                VcpuExit::Intr => VmExit::Interrupted,
                other => VmExit::Other(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VmExit::Interrupted)
            }
            Err(e) => Err(Error::Ioctl {
                op: "KVM_RUN",
                err: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_register_ids_match_the_kernel_uapi() {
        // Values from arch/arm64/include/uapi/asm/kvm.h's KVM_REG_ARM_CORE_REG.
        assert_eq!(REG_X0, 0x6030_0000_0010_0000);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(REG_MPIDR_EL1, 0x6030_0000_0013_c005);
    }
}
