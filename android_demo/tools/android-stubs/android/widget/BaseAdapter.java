// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

public abstract class BaseAdapter implements SpinnerAdapter {
    public BaseAdapter() { throw new RuntimeException("Stub!"); }
    public void notifyDataSetChanged() { throw new RuntimeException("Stub!"); }
}
