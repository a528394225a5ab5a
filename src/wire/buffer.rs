//! A connection's read buffer: bytes read but not yet used sit at `start..end`.

pub struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            data: vec![0; n],
            start: 0,
            end: 0,
        }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes it can hold before it has to grow.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Room to read into: free space at the end, made by moving what is unread to the front,
    /// or by growing. Never empty, so a read of 0 bytes always means end of stream. Callers
    /// bound how much they let accumulate (head size, chunk-line length).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                let grown = (self.data.len() * 2).max(1024);
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// `n` bytes were read into [`Buffer::spare`].
    pub fn filled_by(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Takes every unread byte out (for a connection that changes hands).
    pub fn take_all(&mut self) -> Vec<u8> {
        let rest = self.filled().to_vec();
        (self.start, self.end) = (0, 0);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_compacts_then_grows() {
        let mut b = Buffer::with_capacity(8);
        b.spare()[..8].copy_from_slice(b"abcdefgh");
        b.filled_by(8);
        b.consume(3);
        // Full at the end: the unread part moves to the front.
        assert_eq!(b.spare().len(), 3);
        assert_eq!(b.filled(), b"defgh");
        b.spare()[..3].copy_from_slice(b"ijk");
        b.filled_by(3);
        // Full from the front: it grows.
        assert!(!b.spare().is_empty());
        assert_eq!(b.filled(), b"defghijk");
        b.consume(8);
        assert!(b.is_empty());
        assert_eq!(b.spare().len(), 1024, "grown to at least 1 KiB");
    }
}
