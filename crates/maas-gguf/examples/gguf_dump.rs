//! Prints a GGUF file's metadata (arrays abridged) and tensor directory.
//!     cargo run --release -p maas-gguf --example gguf_dump -- FILE
#![allow(clippy::unwrap_used)]
fn main() {
    let path = std::env::args().nth(1).expect("usage: gguf_dump FILE");
    let f = maas_gguf::GgufFile::open(std::path::Path::new(&path)).unwrap();
    let mut keys: Vec<_> = f.gguf.metadata.keys().collect();
    keys.sort();
    for k in keys {
        match &f.gguf.metadata[k] {
            maas_gguf::Value::Array(a) => {
                println!("{k} = [{} items] {:?}", a.len(), &a[..a.len().min(17)])
            }
            v => println!("{k} = {v:?}"),
        }
    }
    for t in &f.gguf.tensors {
        println!("{} {:?} {:?}", t.name, t.kind, t.dims);
    }
}
