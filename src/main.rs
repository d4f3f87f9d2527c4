//! The `msgtransfer` binary: a thin command-line shell over the library.

fn main() {
    println!("msgtransfer");
}
