// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.util;

public class AndroidException extends Exception {
    public AndroidException() { throw new RuntimeException("Stub!"); }
    public AndroidException(String name) { throw new RuntimeException("Stub!"); }
}
