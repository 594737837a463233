"""The LLVM CPU target: emitters of the bitc ops, blocked float conv layouts, default schedules (dlight rules),
MetaSchedule tuning, and the builder."""
