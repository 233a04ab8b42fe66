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
        self.reply(conn, ch, false, TxSelectOk {});
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        let ops = self.take_tx(conn, ch)?;
        self.collect_forwards();
        let stored = self.commit_ops(conn, ch, ops);
        // Collected for this commit only, whatever became of it.
        let held = stored.as_ref().is_ok_and(|stored| self.hold_commit(conn, ch, *stored));
        self.end_collecting();
        let stored = stored?;
        // As RabbitMQ: commit-ok once the transaction's persistent messages are on disk, and
        // on a cluster member once the other nodes took those forwarded to their queues.
        if !held {
            self.reply_after_sync(conn, ch, stored, TxCommitOk {});
        }
        Ok(())
    }

    /// Carries out a transaction's operations; whether one of them was stored.
    fn commit_ops(&mut self, conn: ConnId, ch: u16, ops: Vec<TxOp>) -> Result<bool, AmqpError> {
        let mut stored = false;
        for op in ops {
            match op {
                TxOp::Publish { method, properties, body } => {
                    let confirm = self.channel(conn, ch).and_then(|c| c.next_confirm_seq());
                    stored |= self.route_and_deliver(conn, ch, method, properties, body, confirm)?
                }
                TxOp::Settle { tag, multiple, requeue, reject } => {
                    use super::deliver::Return;
                    let how = if reject { Return::Rejected } else { Return::Refused };
                    self.settle_as(conn, ch, tag, multiple, requeue, how)?
                }
            }
        }
        Ok(stored)
    }

    pub(super) fn tx_rollback(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        self.take_tx(conn, ch)?;
        self.reply(conn, ch, false, TxRollbackOk {});
        Ok(())
    }

    /// Empties the channel's transaction, which stays open for the next one.
    fn take_tx(&mut self, conn: ConnId, ch: u16) -> Result<Vec<TxOp>, AmqpError> {
        let c = self.channel(conn, ch).filter(|c| c.tx.is_some());
        let c = c.ok_or_else(|| precondition("channel is not transactional"))?;
        c.tx_bytes = 0;
        Ok(c.tx.as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Adds `op` to the channel's transaction, within the transaction limits: over them the
    /// channel closes with 406 (and the transaction is gone with it).
    pub(super) fn hold_in_tx(&mut self, conn: ConnId, ch: u16, op: TxOp) -> Result<(), AmqpError> {
        let max_ops = self.limits.max_tx_operations.unwrap_or(super::DEFAULT_MAX_TX_OPERATIONS);
        let max_bytes = self.limits.max_tx_bytes.unwrap_or(super::DEFAULT_MAX_TX_BYTES);
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        let size = match &op {
            TxOp::Publish { body, .. } => body.len() as u64,
            TxOp::Settle { .. } => 0,
        };
        let Some(tx) = c.tx.as_mut() else {
            return Err(precondition("channel is not transactional"));
        };
        if tx.len() >= max_ops {
            return Err(precondition(format!(
                "transaction holds {max_ops} publishes and acknowledgements, the limit: commit or roll back"
            )));
        }
        if c.tx_bytes.saturating_add(size) > max_bytes {
            return Err(precondition(format!(
                "transaction would hold more than {max_bytes} octets of message bodies: commit or roll back"
            )));
        }
        c.tx_bytes += size;
        tx.push(op);
        Ok(())
    }
}
