//! 16550A UART (COM1-style) on the port I/O bus, built on vm-superio.
//!
//! Output goes to any `Write` sink; guest-visible interrupts are raised
//! through an `EventFd` that the VMM registers as an irqfd for the UART's IRQ
//! (on Linux), or through vmm-sys-util's pipe-based notifier where there is
//! no eventfd (macOS, the BSDs): the VMM polls its read end.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
#[cfg(not(target_os = "linux"))]
use vmm_sys_util::event::{self, EventConsumer, EventFlag, EventNotifier};
#[cfg(target_os = "linux")]
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serial: cannot create interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("serial: cannot queue input: {0}")]
    Input(String),
}

/// An interrupt line backed by an eventfd (KVM irqfd).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct IrqEvent(EventFd);

#[cfg(target_os = "linux")]
impl IrqEvent {
    pub fn new() -> Result<Self, Error> {
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map(IrqEvent)
            .map_err(Error::EventFd)
    }

    /// The eventfd to register with the hypervisor.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }

    /// Takes a pending interrupt: whether the line was raised since the last call.
    pub fn take(&self) -> std::io::Result<bool> {
        match self.0.read() {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(target_os = "linux")]
impl Trigger for IrqEvent {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// An interrupt line where there is no eventfd: a non-blocking pipe
/// (vmm-sys-util's notifier); the VMM polls [`IrqEvent::consumer`].
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub struct IrqEvent {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

#[cfg(not(target_os = "linux"))]
impl IrqEvent {
    pub fn new() -> Result<Self, Error> {
        let (consumer, notifier) =
            event::new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(Error::EventFd)?;
        Ok(IrqEvent { consumer, notifier })
    }

    /// The read end, for the VMM's poll loop.
    pub fn consumer(&self) -> &EventConsumer {
        &self.consumer
    }

    /// Takes a pending interrupt: whether the line was raised since the last call.
    pub fn take(&self) -> std::io::Result<bool> {
        let mut raised = false;
        loop {
            match self.consumer.consume() {
                Ok(()) => raised = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(raised),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Trigger for IrqEvent {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        match self.notifier.notify() {
            // A full pipe holds enough raised edges already.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }
}

/// Transmit buffering: vm-superio writes and flushes every byte, which
/// costs a system call per character. Bytes are collected until a newline,
/// [`OutputBuffer::LIMIT`] bytes, or until the guest reads any UART
/// register (a console polling LSR, or an interrupt handler reading IIR,
/// looks at the UART between bursts), so prompts without a newline still
/// show up at once.
struct OutputBuffer {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl OutputBuffer {
    const LIMIT: usize = 256;

    fn push_out(&mut self) {
        if !self.buf.is_empty() {
            if let Err(e) = self.out.write_all(&self.buf).and_then(|_| self.out.flush()) {
                log::debug!("serial: output lost: {e}");
            }
            self.buf.clear();
        }
    }
}

impl Write for OutputBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::LIMIT || data.contains(&b'\n') {
            self.push_out();
        }
        Ok(data.len())
    }

    /// Called by vm-superio after every byte: deliberately not a flush.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OutputBuffer {
    fn drop(&mut self) {
        self.push_out();
    }
}

/// A 16550A UART occupying 8 ports.
pub struct Serial {
    uart: Uart<IrqEvent, NoEvents, OutputBuffer>,
    /// The guest has enabled the transmit-empty interrupt or loopback at
    /// some point (sticky). See [`Serial::transmit_is_output_only`].
    transmit_side_effects: bool,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// Number of ports a 16550 decodes.
    pub const PORTS: u64 = 8;

    pub fn new(irq: IrqEvent, out: Box<dyn Write + Send>) -> Self {
        let out = OutputBuffer {
            out,
            buf: Vec::with_capacity(OutputBuffer::LIMIT),
        };
        Serial {
            uart: Uart::new(irq, out),
            transmit_side_effects: false,
        }
    }

    /// Register offsets and bits (16550).
    const THR: u8 = 0;
    const IER: u8 = 1;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const IER_THR_EMPTY: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    const MCR_LOOP: u8 = 0x10;

    /// Whether a write to the transmit register (port offset 0) has, and
    /// has always had, no effect but output: no transmit-empty interrupt,
    /// no loopback into the receiver. While true, such writes may be
    /// delivered late (batched), as long as they arrive in order and before
    /// any later access to the UART; once the guest enables either feature
    /// this stays false, so a driver that waits for the interrupt never
    /// waits on a write not yet seen.
    pub fn transmit_is_output_only(&self) -> bool {
        !self.transmit_side_effects
    }

    fn note_transmit_side_effects(&mut self) {
        // Reading LCR, IER (with DLAB clear) and MCR has no side effects.
        let lcr = self.uart.read(Self::LCR);
        let ier = if lcr & Self::LCR_DLAB == 0 {
            self.uart.read(Self::IER)
        } else {
            0
        };
        let mcr = self.uart.read(Self::MCR);
        if ier & Self::IER_THR_EMPTY != 0 || mcr & Self::MCR_LOOP != 0 {
            self.transmit_side_effects = true;
        }
    }

    /// Writes out any buffered guest output (also done on drop).
    pub fn flush_output(&mut self) {
        self.uart.writer_mut().push_out();
    }

    /// The interrupt this UART raises.
    pub fn irq(&self) -> &IrqEvent {
        self.uart.interrupt_evt()
    }

    /// Queues host input for the guest to read; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        self.uart
            .enqueue_raw_bytes(bytes)
            .map_err(|e| Error::Input(format!("{e:?}")))
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.uart.writer_mut().push_out();
        // The UART has byte-wide registers; wider reads see one byte.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(off, v) {
            log::debug!("serial: write at offset {off}: {e:?}");
        }
        if off != Self::THR && !self.transmit_side_effects {
            self.note_transmit_side_effects();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_interrupt_eventfd_is_close_on_exec() {
        use std::os::fd::AsRawFd;
        let irq = IrqEvent::new().expect("eventfd");
        let fd = irq.eventfd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("flags");
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{info}");
    }
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_receives_input_with_interrupt() {
        let sink = Sink::default();
        let mut s = Serial::new(IrqEvent::new().unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        // A partial line waits for a register read (or a flush, or drop).
        s.write(0, b">");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n>");
        s.write(0, b"$");
        s.flush_output();
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n>$");
        // Enable the received-data interrupt (IER bit 0), then queue input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue_input(b"x").unwrap(), 1);
        assert!(
            s.irq().take().unwrap(),
            "the received-data interrupt was raised"
        );
        assert!(!s.irq().take().unwrap(), "and taken");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        s.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }

    fn serial() -> Serial {
        Serial::new(IrqEvent::new().unwrap(), Box::new(Sink::default()))
    }

    #[test]
    fn transmit_is_output_only_until_thr_interrupt_or_loopback() {
        let mut s = serial();
        assert!(s.transmit_is_output_only());
        // Receive interrupt, line control, FIFO, scratch: still output only.
        for (off, v) in [(1, 0x01), (3, 0x03), (2, 0x07), (7, 0x55), (4, 0x0b)] {
            s.write(off, &[v]);
            assert!(s.transmit_is_output_only(), "offset {off} value {v:#x}");
        }
        // With DLAB set, offset 1 is the divisor latch, not IER.
        s.write(3, &[0x83]);
        s.write(1, &[0x02]);
        s.write(3, &[0x03]);
        assert!(s.transmit_is_output_only(), "divisor latch is not IER");
        s.write(1, &[0x03]);
        assert!(!s.transmit_is_output_only(), "THR-empty interrupt enabled");
        s.write(1, &[0x00]);
        assert!(!s.transmit_is_output_only(), "sticky");

        let mut s = serial();
        s.write(4, &[0x10]);
        assert!(!s.transmit_is_output_only(), "loopback");
    }
}
