// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.view;

public abstract class LayoutInflater {
    LayoutInflater() { throw new RuntimeException("Stub!"); }
    public View inflate(int resource, ViewGroup root, boolean attachToRoot) { throw new RuntimeException("Stub!"); }
}
