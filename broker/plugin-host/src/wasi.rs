//! The WASI a plugin gets: wasmtime-wasi's with an empty context (no files, network,
//! environment or arguments), stdout and stderr sent to the broker's log, and the stream
//! calls that wasmtime-wasi would run on a Tokio runtime done synchronously instead.
//!
//! wasmtime-wasi's synchronous bindings wrap blocking stream calls (and stream drops) in
//! `block_on`, which panics on a Tokio worker thread, where the broker calls plugins: a
//! Python `print` or a Rust panic message would fail every call. The streams a plugin can
//! reach are the two log pipes below, which never block, so the blocking calls are their
//! non-blocking ones.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::state::HostState;

/// Longest partial line kept before it is logged anyway.
const LINE_MAX: usize = 8 * 1024;

/// Adds WASI to `linker`, with the synchronous stream calls.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    streams::add_to_linker::<HostState, SyncStreams>(linker, |s| SyncStreamsView(s.table()))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A plugin's stdout or stderr: each line becomes a log line tagged with the plugin.
#[derive(Clone)]
pub(crate) struct LogOutput {
    pub(crate) plugin: Arc<str>,
    pub(crate) stream: &'static str,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogPipe { out: self.clone(), line: Vec::new() })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; Warren links WASIp2.
        Box::new(tokio::io::empty())
    }
}

struct LogPipe {
    out: LogOutput,
    line: Vec<u8>,
}

impl LogPipe {
    fn emit(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(plugin = %self.out.plugin, stream = self.out.stream, "{}", text.trim_end());
            self.line.clear();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.line.len() >= LINE_MAX {
                self.emit();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        self.emit();
    }
}

/// `wasi:io/streams` over the store's resource table, without a Tokio runtime.
struct SyncStreams;

impl HasData for SyncStreams {
    type Data<'a> = SyncStreamsView<'a>;
}

pub(crate) struct SyncStreamsView<'a>(&'a mut ResourceTable);

impl streams::Host for SyncStreamsView<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for SyncStreamsView<'_> {
    fn drop(&mut self, stream: Resource<streams::OutputStream>) -> wasmtime::Result<()> {
        drop(self.0.delete(stream)?);
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<streams::OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let s = self.0.get_mut(&stream)?;
        s.write(Bytes::from(bytes))?;
        s.flush()
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let s = self.0.get_mut(&stream)?;
        s.write_zeroes(usize::try_from(len).unwrap_or(usize::MAX))?;
        s.flush()
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::OutputStream>,
    ) -> wasmtime::Result<Resource<streams::Pollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<streams::OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        self.0.get_mut(&stream)?.flush()
    }

    fn splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        // Splicing from stdin, which is closed, moves nothing and never waits.
        self.splice(dst, src, len)
    }
}

impl streams::HostInputStream for SyncStreamsView<'_> {
    fn drop(&mut self, stream: Resource<streams::InputStream>) -> wasmtime::Result<()> {
        drop(self.0.delete(stream)?);
        Ok(())
    }

    fn read(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        // stdin is closed: a read answers at once.
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn skip(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::InputStream>,
    ) -> wasmtime::Result<Resource<streams::Pollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
