// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.os;

public final class Bundle extends BaseBundle {
    public Bundle() { throw new RuntimeException("Stub!"); }
}
