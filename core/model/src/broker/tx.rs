//! tx.select, tx.commit, tx.rollback: publishes and settlements on a transactional channel
//! are held and applied together at commit, or dropped at rollback.

use warren_codec::{TxCommitOk, TxRollbackOk, TxSelectOk};

use super::{Broker, ConnId};
use crate::channel::TxOp;
use crate::error::{AmqpError, precondition};

impl Broker {
    pub(super) fn tx_select(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        if let Some(c) = self.channel(conn, ch) {
            if c.confirm_seq.is_some() {
                return Err(precondition("cannot switch from confirm to tx mode"));
            }
            c.tx.get_or_insert_with(Vec::new);
        }
        self.send(conn, ch, TxSelectOk {});
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        let ops = self.take_tx(conn, ch)?;
        let mut stored = false;
        for op in ops {
            match op {
                TxOp::Publish { method, properties, body } => {
                    let confirm = self.channel(conn, ch).and_then(|c| c.next_confirm_seq());
                    stored |= self.route_and_deliver(conn, ch, method, properties, body, confirm)?
                }
                TxOp::Settle { tag, multiple, requeue } => {
                    self.settle_now(conn, ch, tag, multiple, requeue)?
                }
            }
        }
        // As RabbitMQ: commit-ok once the transaction's persistent messages are on disk.
        self.reply_after_sync(conn, ch, stored, TxCommitOk {});
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        self.take_tx(conn, ch)?;
        self.send(conn, ch, TxRollbackOk {});
        Ok(())
    }

    /// Empties the channel's transaction, which stays open for the next one.
    fn take_tx(&mut self, conn: ConnId, ch: u16) -> Result<Vec<TxOp>, AmqpError> {
        self.channel(conn, ch)
            .and_then(|c| c.tx.as_mut())
            .map(std::mem::take)
            .ok_or_else(|| precondition("channel is not transactional"))
    }
}
