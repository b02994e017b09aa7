use super::*;
use crate::store::GcOptions;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn packs_on_disk(store: &Store) -> usize {
    store.index_files().unwrap().len()
}

#[test]
fn a_batch_of_blobs_is_one_pack_read_back_whole_by_digest_from_a_fresh_handle() {
    let (dir, store) = store();
    let blobs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    let slices: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    let stored = store.put_blobs(&slices).unwrap();
    assert_eq!(packs_on_disk(&store), 1);
    let again = Store::open(dir.path()).unwrap();
    for ((digest, len), bytes) in stored.iter().zip(&blobs) {
        assert_eq!(*len, bytes.len() as u64);
        assert!(again.has_blob(digest));
        assert_eq!(&again.read_blob(digest).unwrap(), bytes);
    }
    // Storing them again writes nothing.
    store.put_blobs(&slices).unwrap();
    assert_eq!(packs_on_disk(&store), 1);
}

#[test]
fn a_packed_blob_reads_and_seeks_within_its_own_span() {
    let (_dir, store) = store();
    let stored = store.put_blobs(&[b"first blob", b"second"]).unwrap();
    let mut reader = store.open_blob(&stored[1].0).unwrap();
    assert_eq!(reader.len(), 6);
    reader.seek(SeekFrom::End(-3)).unwrap();
    let mut tail = String::new();
    reader.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "ond");
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut head = [0u8; 3];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"sec");
    assert!(reader.seek(SeekFrom::Current(-4)).is_err());
    reader.seek(SeekFrom::Start(100)).unwrap();
    assert_eq!(reader.read(&mut head).unwrap(), 0, "past its end a blob reads as ended, not the next one");
}

#[test]
fn a_pack_whose_index_never_arrived_holds_no_blob_and_gc_removes_it() {
    let (dir, store) = store();
    let stored = store.put_blobs(&[b"one", b"two"]).unwrap();
    let idx = store.index_files().unwrap().into_values().next().unwrap();
    std::fs::remove_file(&idx).unwrap(); // as if killed between the two renames
    let fresh = Store::open(dir.path()).unwrap();
    assert!(!fresh.has_blob(&stored[0].0));
    let report = fresh.gc(&GcOptions::default()).unwrap();
    assert_eq!(report.bytes_freed, 6);
    assert_eq!(std::fs::read_dir(fresh.packs_dir()).unwrap().count(), 0);
}

#[test]
fn gc_keeps_packed_blobs_in_use_and_rewrites_a_pack_without_the_rest() {
    let (_dir, store) = store();
    let stored = store.put_blobs(&[b"kept", b"dropped", b"also dropped"]).unwrap();
    let gone = store.put_blobs(&[b"all of this pack", b"goes"]).unwrap();
    let live: HashSet<String> = [stored[0].0.clone()].into();
    let mut dry = GcReport::default();
    store.collect_packs(&live, true, &mut dry).unwrap();
    assert_eq!((dry.blobs_removed, dry.bytes_freed), (4, 7 + 12 + 16 + 4));
    assert_eq!(packs_on_disk(&store), 2, "a dry run removed a pack");
    let mut report = GcReport::default();
    store.collect_packs(&live, false, &mut report).unwrap();
    assert_eq!(report.blobs_removed, 4);
    assert_eq!(packs_on_disk(&store), 1);
    assert_eq!(store.read_blob(&stored[0].0).unwrap(), b"kept");
    for digest in [&stored[1].0, &stored[2].0, &gone[0].0] {
        assert!(!store.has_blob(digest));
    }
}

#[test]
fn gc_keeps_a_blob_held_twice_when_its_rewrite_takes_the_name_of_the_other_pack() {
    let (_dir, store) = store();
    let [x, y]: [&[u8]; 2] = [b"held twice", b"dead"];
    store.write_pack(&[(&blake3::hash(x).to_hex(), x), (&blake3::hash(y).to_hex(), y)]).unwrap();
    let alone = store.write_pack(&[(&blake3::hash(x).to_hex(), x)]).unwrap();
    // The pack of both sorts first, so its rewrite (x alone) lands on the other's name.
    for (name, idx) in store.index_files().unwrap() {
        if name != alone {
            std::fs::rename(&idx, idx.with_file_name("0.idx")).unwrap();
            std::fs::rename(idx.with_extension("pack"), idx.with_file_name("0.pack")).unwrap();
        }
    }
    let live: HashSet<String> = [blake3::hash(x).to_hex().to_string()].into();
    store.collect_packs(&live, false, &mut GcReport::default()).unwrap();
    assert_eq!(store.read_blob(&blake3::hash(x).to_hex()).unwrap(), x);
    assert_eq!(packs_on_disk(&store), 1);
}

#[test]
fn an_index_whose_pack_is_gone_or_short_names_no_readable_blob_and_gc_drops_it() {
    let (dir, store) = store();
    let stored = store.put_blobs(&[b"abc", b"defg"]).unwrap();
    let idx = store.index_files().unwrap().into_values().next().unwrap();
    let pack = idx.with_extension("pack");
    std::fs::remove_file(&pack).unwrap();
    std::fs::write(&pack, b"abc").unwrap(); // cut short: the second blob's span is past its end
    let fresh = Store::open(dir.path()).unwrap();
    assert_eq!(fresh.read_blob(&stored[0].0).unwrap(), b"abc");
    assert!(matches!(fresh.open_blob(&stored[1].0), Err(StoreError::Corrupt { .. })));
    std::fs::remove_file(&pack).unwrap();
    let mut report = GcReport::default();
    fresh.collect_packs(&HashSet::new(), false, &mut report).unwrap();
    assert_eq!((report.blobs_removed, packs_on_disk(&fresh)), (2, 0));
}

#[test]
fn a_cache_of_the_layout_before_packs_is_marked_when_it_first_holds_one() {
    let (dir, _) = store();
    let marker = dir.path().join("LAYOUT");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), super::super::LAYOUT);
    std::fs::write(&marker, super::super::LOOSE_LAYOUT).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_bytes(b"a loose blob").unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), super::super::LOOSE_LAYOUT);
    store.put_blobs(&[b"packed"]).unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), super::super::LAYOUT);
    std::fs::write(&marker, "silkie-store/9").unwrap();
    let refused = Store::open(dir.path()).unwrap_err().to_string();
    assert!(refused.contains("this silkie reads `silkie-store/2` and `silkie-store/1`"), "{refused}");
}

#[test]
fn verify_finds_a_packed_blob_whose_bytes_changed() {
    let (_dir, store) = store();
    let stored = store.put_blobs(&[b"aaaa", b"bbbb"]).unwrap();
    let pack = store.index_files().unwrap().into_values().next().unwrap().with_extension("pack");
    let mut perms = std::fs::metadata(&pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&pack, perms).unwrap();
    std::fs::write(&pack, b"aaaaBBBB").unwrap();
    assert_eq!(store.check_blob(&stored[0].0), None);
    let problem = store.check_blob(&stored[1].0).unwrap();
    assert!(problem.contains("holds content with digest"), "{problem}");
}
