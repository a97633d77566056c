//! Priority memory protection. Not built yet: see issue 4.
