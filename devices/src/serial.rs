//! 16550A UART (COM1-style) on the port I/O bus, built on vm-superio.
//!
//! Output goes to any `Write` sink; guest-visible interrupts are raised
//! through a [`Notifier`] that the VMM connects to the UART's interrupt
//! line (KVM's irqfd, HVF's relay).

use std::io::Write;

use vm_superio::Serial as Uart;
use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::notifier::Notifier;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serial: cannot create its interrupt line: {0}")]
    Irq(std::io::Error),
    #[error("serial: cannot queue input: {0}")]
    Input(String),
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
    uart: Uart<Notifier, NoEvents, OutputBuffer>,
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

    pub fn new(irq: Notifier, out: Box<dyn Write + Send>) -> Self {
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
    pub fn irq(&self) -> &Notifier {
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

/// Layout: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR, the sticky
/// transmit-side-effects flag, then the receive FIFO's bytes.
impl crate::snapshot::Snapshot for Serial {
    fn save_state(&self) -> Vec<u8> {
        let s = self.uart.state();
        let mut v = vec![
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
            u8::from(self.transmit_side_effects),
        ];
        v.extend_from_slice(&s.in_buffer);
        v
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::snapshot::StateError> {
        let bad = |why| crate::snapshot::StateError {
            device: "serial",
            len: state.len(),
            why,
        };
        let (regs, fifo) = state
            .split_at_checked(10)
            .ok_or_else(|| bad("shorter than the registers"))?;
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: regs[0],
            baud_divisor_high: regs[1],
            interrupt_enable: regs[2],
            interrupt_identification: regs[3],
            line_control: regs[4],
            line_status: regs[5],
            modem_control: regs[6],
            modem_status: regs[7],
            scratch: regs[8],
            in_buffer: fifo.to_vec(),
        };
        // The same eventfd (a duplicate of it): the irqfd stays attached.
        let irq = || {
            self.uart
                .interrupt_evt()
                .try_clone()
                .map_err(|_| bad("cannot duplicate the interrupt eventfd"))
        };
        let (irq, spare) = (irq()?, irq()?);
        let placeholder = Uart::new(
            spare,
            OutputBuffer {
                out: Box::new(std::io::sink()),
                buf: Vec::new(),
            },
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        self.uart = Uart::from_state(&s, irq, NoEvents, out)
            .map_err(|_| bad("the receive FIFO is longer than the UART's"))?;
        self.transmit_side_effects = regs[9] != 0;
        Ok(())
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
        let irq = Notifier::new().expect("eventfd");
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
        let mut s = Serial::new(Notifier::new().unwrap(), Box::new(sink.clone()));
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
        Serial::new(Notifier::new().unwrap(), Box::new(Sink::default()))
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
